"""Model providers: one wire format each, behind the narrow ``Provider`` seam."""

from processors.providers._base import Provider
from processors.providers.anthropic import Anthropic
from processors.providers.local import LocalModel
from processors.providers.openai import OpenAICompatible

__all__ = ["Anthropic", "LocalModel", "OpenAICompatible", "Provider"]
