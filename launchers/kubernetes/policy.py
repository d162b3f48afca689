"""What a start request may choose about its kernel's pod: the operator's allow lists (pure).

A client's ``KERNEL_*`` values become parts of the pod that can raise its privileges: the
service account (``KERNEL_SERVICE_ACCOUNT_NAME``: its token, its RBAC), the image
(``KERNEL_IMAGE``), the volumes (``KERNEL_VOLUMES``, ``KERNEL_VOLUME_MOUNTS``: a Secret,
the node's files, another user's claim) and the user and group the container runs as
(``KERNEL_UID``, ``KERNEL_GID``). Each passes an allow list here before anything is
created; anything else is a 400 naming the value and the list. The namespace
(``KERNEL_NAMESPACE``) has its own list, ``--k8s-kernel-namespaces``, in the launcher.

By default a request may choose only what the operator configured anyway: the template's
service account (or ``default`` when it names none), the template's, the kernelspec's or
``--k8s-kernel-image``'s image, ``emptyDir`` volumes and mounts of them, and the template's
own ``runAsUser``/``runAsGroup``. Under ``--kernel-isolation users`` a request chooses no
user or group at all: the pod runs as its user's account (:func:`.pod.users_security`), and
``KERNEL_UID``/``KERNEL_GID`` are refused. Patterns are shell-style (``*``, ``?``, ``[...]``) and may
contain ``{username}``, the kernel's user (the authenticated user where the gateway
authenticates, else ``KERNEL_USERNAME``), e.g. ``claim-{username}``: that user's claims only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..base import KernelStartError, LaunchRequest
from .pod import json_list, kernel_container, kubernetes_meta, refused_id

VOLUME_TYPES = frozenset(
    [
        "awsElasticBlockStore",
        "azureDisk",
        "azureFile",
        "cephfs",
        "cinder",
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "fc",
        "flexVolume",
        "flocker",
        "gcePersistentDisk",
        "gitRepo",
        "glusterfs",
        "hostPath",
        "image",
        "iscsi",
        "nfs",
        "persistentVolumeClaim",
        "photonPersistentDisk",
        "portworxVolume",
        "projected",
        "quobyte",
        "rbd",
        "scaleIO",
        "secret",
        "storageos",
        "vsphereVolume",
    ]
)
"""The volume sources of a core/v1 ``Volume``."""
DEFAULT_VOLUME_TYPES = ("emptyDir",)
USERNAME = "{username}"
_NAME_CHARS = re.compile(r"^[a-z0-9.\-*?\[\]!]+$")
_IMAGE_CHARS = re.compile(r"^[A-Za-z0-9._/:@\-*?\[\]!]+$")


class PolicyError(ValueError):
    """An allow list that is malformed or can never match (the gateway refuses to start)."""


def _glob(pattern: str, setting: str, username: str | None = None) -> re.Pattern[str] | None:
    """``pattern`` as an anchored regular expression; ``{username}`` stands for
    ``username`` literally (None: the pattern matches nothing)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith(USERNAME, i):
            if username is None:
                return None
            out.append(re.escape(username))
            i += len(USERNAME)
            continue
        ch = pattern[i]
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                raise PolicyError(f"{setting}: {pattern!r} has a '[' without its ']'")
            body = pattern[i + 1 : end]
            negate = body.startswith("!")
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
            i = end
        elif ch in "{}":
            raise PolicyError(
                f"{setting}: {pattern!r}: the only placeholder is {USERNAME}"
                if ch == "{"
                else f"{setting}: {pattern!r} has a '}}' without its '{{'"
            )
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z")


def _patterns(
    text: str | Iterable[str], setting: str, chars: re.Pattern[str], what: str
) -> tuple[str, ...]:
    items = text.split(",") if isinstance(text, str) else list(text)
    patterns = tuple(p.strip() for p in items if p.strip())
    for pattern in patterns:
        _glob(pattern, setting, "user")  # malformed: raises
        if not chars.match(pattern.replace(USERNAME, "u")):
            raise PolicyError(
                f"{setting}: {pattern!r} can never match: {what} has no such characters"
            )
    return patterns


def _ids(text: str | Iterable[str], setting: str) -> tuple[range, ...]:
    items = text.split(",") if isinstance(text, str) else [str(i) for i in text]
    ranges = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        low, _, high = item.partition("-")
        if not low.isdigit() or not (high or low).isdigit():
            raise PolicyError(f"{setting}: {item!r} is not an id or a range like 1000-1999")
        first, last = int(low), int(high or low)
        if last < first:
            raise PolicyError(f"{setting}: {item!r} is an empty range")
        if first == 0:
            raise PolicyError(f"{setting}: {item!r} allows 0, and kernels never run as root")
        ranges.append(range(first, last + 1))
    return tuple(ranges)


def _words(items: Sequence[str]) -> str:
    return ", ".join(items) if items else "none"


def _ranges_words(ranges: Sequence[range]) -> str:
    return _words([str(r.start) if len(r) == 1 else f"{r.start}-{r.stop - 1}" for r in ranges])


def _matches(value: str, patterns: Iterable[str], setting: str, username: str | None) -> bool:
    for pattern in patterns:
        regex = _glob(pattern, setting, username)
        if regex is not None and regex.match(value):
            return True
    return False


def _refuse(message: str) -> KernelStartError:
    return KernelStartError(message, status=400)


@dataclass(frozen=True)
class AllowLists:
    """The operator's allow lists for one Kubernetes launcher (from its settings)."""

    service_accounts: tuple[str, ...] = ()
    images: tuple[str, ...] = ()
    volume_types: tuple[str, ...] = DEFAULT_VOLUME_TYPES
    claims: tuple[str, ...] = ()
    uids: tuple[range, ...] = ()
    gids: tuple[range, ...] = ()

    @classmethod
    def parse(
        cls,
        service_accounts: str | Iterable[str] = "",
        images: str | Iterable[str] = "",
        volume_types: str | Iterable[str] = DEFAULT_VOLUME_TYPES,
        claims: str | Iterable[str] = "",
        uids: str | Iterable[str] = "",
        gids: str | Iterable[str] = "",
    ) -> AllowLists:
        """The allow lists from the settings' comma-separated text (or lists); raises
        :class:`PolicyError` for one that is malformed or can never match."""
        items = volume_types.split(",") if isinstance(volume_types, str) else volume_types
        types = tuple(t.strip() for t in items if t.strip())
        for name in types:
            if name == "persistentVolumeClaim":
                raise PolicyError(
                    "--k8s-allowed-volume-types: persistentVolumeClaim volumes are allowed by "
                    "claim name: list the claims in --k8s-allowed-claims (e.g. claim-{username})"
                )
            if name not in VOLUME_TYPES:
                raise PolicyError(
                    f"--k8s-allowed-volume-types: {name!r} is not a Kubernetes volume type "
                    f"(one of {', '.join(sorted(VOLUME_TYPES - {'persistentVolumeClaim'}))})"
                )
        return cls(
            service_accounts=_patterns(
                service_accounts, "--k8s-allowed-service-accounts", _NAME_CHARS, "a name"
            ),
            images=_patterns(images, "--k8s-allowed-images", _IMAGE_CHARS, "an image reference"),
            volume_types=types,
            claims=_patterns(claims, "--k8s-allowed-claims", _NAME_CHARS, "a claim name"),
            uids=_ids(uids, "--k8s-allowed-uids"),
            gids=_ids(gids, "--k8s-allowed-gids"),
        )

    def check(
        self, request: LaunchRequest, template: dict[str, Any], default_image: str = ""
    ) -> None:
        """Refuse (400) a request whose ``KERNEL_*`` values choose anything these lists do
        not allow; called by the launcher before it creates anything."""
        env = request.env
        spec = template.get("spec") or {}
        container = kernel_container(template)
        user = request.username
        self._check_account(env.get("KERNEL_SERVICE_ACCOUNT_NAME", "").strip(), spec, user)
        configured = [
            kubernetes_meta(request).get("image") or "",
            default_image,
            container.get("image") or "",
        ]
        asked = env.get("KERNEL_IMAGE", "").strip()
        self._check_image(asked, [i for i in configured if i], user)
        if request.account is not None:  # users mode: the ids are the identity's
            for var in ("KERNEL_UID", "KERNEL_GID"):
                if env.get(var, "").strip():
                    raise _refuse(refused_id(var, request))
        security = spec.get("securityContext") or {}
        for var, key, allowed, setting in (
            ("KERNEL_UID", "runAsUser", self.uids, "--k8s-allowed-uids"),
            ("KERNEL_GID", "runAsGroup", self.gids, "--k8s-allowed-gids"),
        ):
            self._check_id(var, env.get(var, "").strip(), security.get(key), allowed, setting)
        self._check_volumes(request, spec, container)

    def _check_account(self, asked: str, spec: dict[str, Any], user: str | None) -> None:
        if not asked:
            return
        own = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
        if asked == own or _matches(asked, self.service_accounts, "", user):
            return
        raise _refuse(
            f"KERNEL_SERVICE_ACCOUNT_NAME={asked} is not allowed here (allowed: {own}"
            + "".join(f", {p}" for p in self.service_accounts)
            + "; see --k8s-allowed-service-accounts)"
        )

    def _check_image(self, asked: str, configured: list[str], user: str | None) -> None:
        if not asked or asked in configured or _matches(asked, self.images, "", user):
            return
        raise _refuse(
            f"KERNEL_IMAGE={asked} is not allowed here (allowed: "
            f"{_words([*dict.fromkeys(configured), *self.images])}; see --k8s-allowed-images)"
        )

    @staticmethod
    def _check_id(var: str, text: str, own: Any, allowed: Sequence[range], setting: str) -> None:
        if not text:
            return
        if not text.isdigit():
            raise _refuse(f"{var} must be a number, not {text!r}")
        value = int(text)
        if value == 0:
            raise _refuse(f"{var}=0: kernels do not run as root")
        if value == own or any(value in r for r in allowed):
            return
        listed = ([str(own)] if own else []) + [_ranges_words(allowed)] * bool(allowed)
        raise _refuse(
            f"{var}={value} is not allowed here (allowed: {_words(listed)}; see {setting})"
        )

    def _check_volumes(
        self, request: LaunchRequest, spec: dict[str, Any], container: dict[str, Any]
    ) -> None:
        volumes = json_list(request, "KERNEL_VOLUMES")
        taken = {v.get("name") for v in spec.get("volumes") or []}
        for volume in volumes:
            name = volume["name"]
            sources = [k for k in volume if k != "name"]
            if len(sources) != 1:
                raise _refuse(
                    f"KERNEL_VOLUMES: volume {name!r} must have exactly one volume type, "
                    f"not {_words(sources)}"
                )
            if name in taken:
                raise _refuse(f"KERNEL_VOLUMES: the pod already has a volume named {name!r}")
            taken.add(name)
            kind = sources[0]
            if kind == "persistentVolumeClaim":
                self._check_claim(name, volume[kind], request.username)
            elif kind not in self.volume_types:
                raise _refuse(
                    f"KERNEL_VOLUMES: volume {name!r} is a {kind} volume, which is not allowed "
                    f"here (allowed volume types: {_words(self.volume_types)}"
                    + (", and persistentVolumeClaim of " + _words(self.claims)) * bool(self.claims)
                    + "; see --k8s-allowed-volume-types)"
                )
        mountable = {v["name"] for v in volumes} | {
            m.get("name") for m in container.get("volumeMounts") or []
        }
        for mount in json_list(request, "KERNEL_VOLUME_MOUNTS"):
            if mount["name"] not in mountable:
                raise _refuse(
                    f"KERNEL_VOLUME_MOUNTS: {mount['name']!r} is not a volume of "
                    "KERNEL_VOLUMES (nor one the kernel container mounts already)"
                )

    def _check_claim(self, name: str, source: Any, username: str | None) -> None:
        claim = source.get("claimName", "") if isinstance(source, dict) else ""
        if claim and _matches(claim, self.claims, "", username):
            return
        allowed = [p.replace(USERNAME, username or USERNAME) for p in self.claims]
        raise _refuse(
            f"KERNEL_VOLUMES: volume {name!r} claims {claim or '(no claimName)'}, which is not "
            f"allowed here (allowed claims: {_words(allowed)}; see --k8s-allowed-claims)"
        )
