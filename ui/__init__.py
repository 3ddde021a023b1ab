"""The Gradio interface: calls ``stpp`` functions, holds no training logic and never imports torch."""

from ui.app import TABS, build_app
from ui.services import Services, Settings

__all__ = ["TABS", "Services", "Settings", "build_app"]
