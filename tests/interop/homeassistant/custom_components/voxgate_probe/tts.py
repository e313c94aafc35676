"""The probe's text-to-speech engine: every answer is the MP3 that Home Assistant's demo ships (offline)."""
import os

import homeassistant.components as components
from homeassistant.components.tts import Provider


async def async_get_engine(hass, config, discovery_info=None):
    return ProbeSpeech()


class ProbeSpeech(Provider):
    def __init__(self):
        self.name = "voxgate probe speech"

    @property
    def default_language(self):
        return "en"

    @property
    def supported_languages(self):
        return ["en"]

    def get_tts_audio(self, message, language, options):
        with open(os.path.join(os.path.dirname(components.__file__), "demo", "tts.mp3"), "rb") as f:
            return "mp3", f.read()
