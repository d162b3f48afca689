"""An example launcher: kernels run as local processes, each given ``HELLO_GREETING``.

Its one setting, ``hello_greeting``, is a ``raygate serve`` option (``--hello-greeting``), a
variable (``RAYGATE_HELLO_GREETING``) and a config file key, like raygate's own.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from raygate.config import GatewayConfig
from raygate.launchers.base import KernelHandle, LaunchRequest
from raygate.launchers.local import LocalLauncher
from raygate.settings import setting


@dataclass
class HelloSettings:
    hello_greeting: str = setting(
        "hello", "What kernels of the hello launcher find in HELLO_GREETING."
    )


class HelloLauncher(LocalLauncher):
    """Local kernels (the local launcher's machinery), greeted."""

    kind = "hello"
    settings = HelloSettings

    def __init__(self, greeting: str) -> None:
        super().__init__()
        self.greeting = greeting

    @classmethod
    def from_settings(cls, settings: HelloSettings, gateway: GatewayConfig) -> HelloLauncher:
        return cls(settings.hello_greeting)

    async def launch(self, request: LaunchRequest) -> KernelHandle:
        greeted = replace(request, env={**request.env, "HELLO_GREETING": self.greeting})
        return await super().launch(greeted)
