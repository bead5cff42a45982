"""How the app is deployed: public (anyone on the internet) or local, where things live, and the limits.

Read once at start-up from the environment and the app's flags (``Deployment.from_env``); frozen
afterwards, so every handler sees the same settings. Public mode is on when ``SPACE_ID`` is set (a
Hugging Face Space), when ``SEG_PUBLIC`` says so, or with ``--public``; then visitors never name a
server path, each works in a space of their own (``seg.visitors``) and training is bounded. Local
mode keeps workspaces under one labels root, chosen by name.

Environment variables (all optional; a malformed value stops the app at start-up with a message,
rather than silently running with a default the operator did not choose):

====================================  ====================================================================
``SPACE_ID``                          set by Hugging Face Spaces: turns public mode on
``SEG_PUBLIC``                        ``1``/``true``/``yes``/``on`` turns public mode on (like ``--public``)
``SEG_LABEL_DIR``                     labels root, the folder holding the local workspaces
                                      (default ``$XDG_DATA_HOME/seglab``, i.e. ``~/.local/share/seglab``)
``SEG_IMPORT_ROOTS``                  absolute folders, ``os.pathsep``-separated, the Label tab may import
                                      from in local mode; none by default (and never in public mode)
``SEG_AUTH``                          ``user:password[,user2:password2]``: a login in front of the whole app
                                      (like ``--auth``); a password cannot contain a comma
``SEG_VISITOR_DIR``                   where visitor spaces live (default ``<cache>/visitors``, the cache
                                      being ``$SEG_CACHE_DIR`` or ``~/.cache/seglab/cache``)
``SEG_VISITOR_MAX_IMAGES``            images per visitor (default 200)
``SEG_VISITOR_MAX_MB``                megabytes per visitor, images and checkpoints together (default 200)
``SEG_VISITOR_EXPIRY_HOURS``          a visitor's space is deleted after this long unused (default 24)
``SEG_MAX_VISITORS``                  visitor spaces kept at once (default 500)
``SEG_PUBLIC_MAX_EPOCHS``             epochs of a public training run (default 5)
``SEG_PUBLIC_MAX_TRAIN_IMAGES``       training images a public run uses (default 200)
``SEG_PUBLIC_MAX_TRAIN_SECONDS``      wall-clock seconds of a public run (default 600)
``SEG_PUBLIC_MAX_RUNS``               public training runs at once (default 1)
====================================  ====================================================================
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from seg.config import CACHE_ENV
from seg.labeling.workspace import labels_root as default_labels_root

PUBLIC_ENV = "SEG_PUBLIC"
SPACE_ENV = "SPACE_ID"
IMPORT_ROOTS_ENV = "SEG_IMPORT_ROOTS"
AUTH_ENV = "SEG_AUTH"
VISITOR_DIR_ENV = "SEG_VISITOR_DIR"
VISITOR_MAX_IMAGES_ENV = "SEG_VISITOR_MAX_IMAGES"
VISITOR_MAX_MB_ENV = "SEG_VISITOR_MAX_MB"
VISITOR_EXPIRY_ENV = "SEG_VISITOR_EXPIRY_HOURS"
MAX_VISITORS_ENV = "SEG_MAX_VISITORS"
PUBLIC_MAX_EPOCHS_ENV = "SEG_PUBLIC_MAX_EPOCHS"
PUBLIC_MAX_TRAIN_IMAGES_ENV = "SEG_PUBLIC_MAX_TRAIN_IMAGES"
PUBLIC_MAX_TRAIN_SECONDS_ENV = "SEG_PUBLIC_MAX_TRAIN_SECONDS"
PUBLIC_MAX_RUNS_ENV = "SEG_PUBLIC_MAX_RUNS"

MB = 1024 * 1024
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


class DeploymentError(ValueError):
    """A deployment setting is malformed; the message names the variable or flag and what it wants."""


@dataclass(frozen=True)
class TrainingBounds:
    """What one training run may use; ``None`` means unbounded (local mode)."""

    epochs: int
    images: int | None
    seconds: float | None
    #: Plain words for the UI when a request was cut down, else "".
    note: str = ""


@dataclass(frozen=True)
class Deployment:
    """Every deployment setting; build it with ``from_env`` (the defaults here are the safe ones)."""

    public: bool = False
    labels_root: Path = field(default_factory=default_labels_root)
    #: Folders a local user may import from; always empty in public mode.
    import_roots: tuple[Path, ...] = ()
    #: (user, password) pairs for the app's login; kept out of ``repr`` so it never reaches a log.
    auth: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    visitor_root: Path = field(default_factory=lambda: _default_visitor_root(os.environ))
    visitor_max_images: int = 200
    visitor_max_bytes: int = 200 * MB
    visitor_expiry_s: float = 24 * 3600.0
    max_visitors: int = 500
    public_max_epochs: int = 5
    public_max_train_images: int = 200
    public_max_train_seconds: float = 600.0
    public_max_runs: int = 1

    @property
    def mode(self) -> str:
        return "public" if self.public else "local"

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth)

    @property
    def server_folder_import(self) -> bool:
        """Whether the Label tab may offer "import a folder on the server" at all."""
        return not self.public and bool(self.import_roots)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, public_flag: bool = False, auth_flag: str | None = None
    ) -> Deployment:
        """Settings from ``environ`` (default ``os.environ``) and the command-line flags.

        ``--public`` can only turn public mode on: nothing here turns it off on a Space.
        ``--auth`` wins over ``SEG_AUTH``.
        """
        env = os.environ if environ is None else environ
        public = bool(public_flag) or bool(env.get(SPACE_ENV)) or _flag(env, PUBLIC_ENV)
        roots = () if public else _import_roots(env.get(IMPORT_ROOTS_ENV, ""))
        auth_text = auth_flag if auth_flag is not None else env.get(AUTH_ENV, "")
        return cls(
            public=public,
            labels_root=default_labels_root(env),
            import_roots=roots,
            auth=parse_auth(auth_text, "--auth" if auth_flag is not None else AUTH_ENV),
            visitor_root=_path(env, VISITOR_DIR_ENV) or _default_visitor_root(env),
            visitor_max_images=_int(env, VISITOR_MAX_IMAGES_ENV, 200, 1, 1_000_000),
            visitor_max_bytes=int(_float(env, VISITOR_MAX_MB_ENV, 200.0, 1.0, 1e7) * MB),
            visitor_expiry_s=_float(env, VISITOR_EXPIRY_ENV, 24.0, 0.01, 24.0 * 365) * 3600.0,
            max_visitors=_int(env, MAX_VISITORS_ENV, 500, 1, 1_000_000),
            public_max_epochs=_int(env, PUBLIC_MAX_EPOCHS_ENV, 5, 1, 1000),
            public_max_train_images=_int(env, PUBLIC_MAX_TRAIN_IMAGES_ENV, 200, 1, 1_000_000),
            public_max_train_seconds=_float(env, PUBLIC_MAX_TRAIN_SECONDS_ENV, 600.0, 1.0, 7 * 24 * 3600.0),
            public_max_runs=_int(env, PUBLIC_MAX_RUNS_ENV, 1, 1, 64),
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Deployment:
        """Settings from a namespace parsed with ``add_arguments`` on top of the environment."""
        return cls.from_env(
            environ, public_flag=bool(getattr(args, "public", False)), auth_flag=getattr(args, "auth", None)
        )

    def training_bounds(self, epochs: int, images: int | None = None) -> TrainingBounds:
        """The run a request may start: cut to the public limits in public mode, as asked locally."""
        epochs = max(1, int(epochs))
        if not self.public:
            return TrainingBounds(epochs, images, None)
        cut = []
        if epochs > self.public_max_epochs:
            cut.append(f"{self.public_max_epochs} epochs")
        if images is None or images > self.public_max_train_images:
            if images is not None:
                cut.append(f"{self.public_max_train_images} images")
            images = self.public_max_train_images
        note = ""
        if cut:
            note = f"Public runs are limited to {' and '.join(cut)}, so this run uses that much."
        return TrainingBounds(min(epochs, self.public_max_epochs), images, self.public_max_train_seconds, note)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--public`` and ``--auth USER:PASS`` for the app's command line."""
    parser.add_argument(
        "--public",
        action="store_true",
        help="public mode: no server paths from visitors, a space per visitor, bounded "
        "training (on by itself on a Hugging Face Space)",
    )
    parser.add_argument(
        "--auth",
        default=None,
        metavar="USER:PASS[,USER2:PASS2]",
        help=f"put a login in front of the whole app (or set {AUTH_ENV})",
    )


def parse_auth(text: str | None, source: str = AUTH_ENV) -> tuple[tuple[str, str], ...]:
    """``"user:pass[,user2:pass2]"`` -> ((user, pass), ...); the password may contain ':'."""
    text = (text or "").strip()
    if not text:
        return ()
    pairs = []
    for item in text.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user.strip() or not password:
            raise DeploymentError(
                f"{source} must look like user:password[,user2:password2]; "
                f"each entry needs a user name, a ':' and a password"
            )
        pairs.append((user.strip(), password))
    return tuple(pairs)


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise DeploymentError(f"{name} must be 1/0, true/false, yes/no or on/off, got {value[:20]!r}")


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise DeploymentError(f"{name} must be a whole number, got {raw[:20]!r}") from None
    if not low <= value <= high:
        raise DeploymentError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise DeploymentError(f"{name} must be a number, got {raw[:20]!r}") from None
    if not low <= value <= high:  # also refuses nan
        raise DeploymentError(f"{name} must be between {low:g} and {high:g}, got {raw[:20]}")
    return value


def _path(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    path = Path(raw).expanduser()
    if "\x00" in raw or not path.is_absolute():
        raise DeploymentError(f"{name} must be an absolute folder path")
    return path.resolve()


def _import_roots(text: str) -> tuple[Path, ...]:
    roots = []
    for raw in (part.strip() for part in text.split(os.pathsep)):
        if not raw:
            continue
        path = Path(raw).expanduser()
        if "\x00" in raw or not path.is_absolute():
            raise DeploymentError(f"{IMPORT_ROOTS_ENV} must list absolute folders separated by {os.pathsep!r}")
        if path.resolve() == Path(path.anchor):
            raise DeploymentError(
                f"{IMPORT_ROOTS_ENV} cannot offer the whole file system ({raw!r}); list the folders of images instead"
            )
        roots.append(path.resolve())
    return tuple(dict.fromkeys(roots))


def _default_visitor_root(env: Mapping[str, str]) -> Path:
    """``<cache>/visitors``: visitor work expires anyway, like the cache; nothing a visitor chooses."""
    if env.get(CACHE_ENV):
        cache = Path(env[CACHE_ENV]).expanduser()
    else:
        cache = Path(env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")).expanduser() / "seglab" / "cache"
    return cache.resolve() / "visitors"


def describe(settings: Deployment) -> str:
    """One log line of the settings that matter (no passwords, no user names)."""
    parts = [f"mode={settings.mode}", f"auth={'on' if settings.auth_enabled else 'off'}"]
    if settings.public:
        parts += [
            f"visitors={settings.visitor_root}",
            f"quota={settings.visitor_max_images} images/{settings.visitor_max_bytes // MB} MB",
            f"expiry={settings.visitor_expiry_s / 3600:g} h",
            f"training<={settings.public_max_epochs} epochs/{settings.public_max_train_images} images/"
            f"{settings.public_max_train_seconds:g} s x{settings.public_max_runs}",
        ]
    else:
        parts += [f"labels={settings.labels_root}", f"import_roots={len(settings.import_roots)}"]
    return " ".join(parts)
