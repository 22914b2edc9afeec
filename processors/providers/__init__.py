"""Model providers: one wire format each, behind the narrow ``Provider`` seam."""

from weir.processors.providers._base import Provider
from weir.processors.providers.anthropic import Anthropic
from weir.processors.providers.local import LocalModel
from weir.processors.providers.openai import OpenAICompatible

__all__ = ["Anthropic", "LocalModel", "OpenAICompatible", "Provider"]
