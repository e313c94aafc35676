//! `voxgate status|trigger|stop|mute|unmute|reload|events`: one request to the daemon's control socket and its
//! reply printed; `events` prints events until the daemon goes away.

use std::io::Write;

use super::{CliError, ClientArgs};
use crate::control::client::{Client, ClientError, describe, describe_event};
use crate::control::proto::Request;

pub fn call(args: &ClientArgs, request: Request) -> Result<(), CliError> {
    let socket = match &args.socket {
        Some(s) => s.clone(),
        None => super::load(args.config.as_deref())?.config.control.socket,
    };
    if socket.as_os_str().is_empty() {
        return Err(CliError::Unreachable("control.socket is empty: this configuration has no control socket".into()));
    }
    let failed = |e: ClientError| match e {
        e @ ClientError::Unreachable { .. } => CliError::Unreachable(e.to_string()),
        e => CliError::Failure(e.into()),
    };
    let mut client = Client::connect(&socket).map_err(failed)?;
    let reply = client.call(request.clone()).map_err(failed)?;
    // For scripts, the reply as the daemon sent it; `events` prints only the events that follow a success.
    if args.json && (!reply.ok || request != Request::Subscribe) {
        println!("{}", serde_json::to_string(&reply).unwrap_or_default());
    }
    let reply = reply.into_result().map_err(|e| CliError::Failure(anyhow::anyhow!("the daemon at {} says: {e}", socket.display())))?;
    if request != Request::Subscribe {
        if !args.json {
            print!("{}", describe(&request, &reply));
        }
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    while let Some(event) = client.event().map_err(failed)? {
        let line = match args.json {
            true => serde_json::to_string(&event).unwrap_or_default(),
            false => describe_event(&event),
        };
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            break;
        }
    }
    Ok(())
}
