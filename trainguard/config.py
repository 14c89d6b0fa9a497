"""The config file: one YAML document, validated strictly, resolved once.

Why strict: a typo such as ``ouput_dir`` silently ignored would make trainguard watch
nothing, and the user finds out only when the run they trusted it with dies.  So unknown
keys are errors, and every error names the file, the key path and what was expected.

Why resolve paths here: seed 003 is a monitor that resolved ``outputs/my-lora`` against
the directory it happened to be started from.  Every relative path in the file is
resolved against the config file's own folder, once, and everything downstream sees
absolute paths only.
"""

from __future__ import annotations

import math
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

JOB_NAME_RE = re.compile(r"^[a-zA-Z0-9_.-]+$")
# A host name as the `host` label carries it (DESIGN.md §2): it goes into Alertmanager
# matchers and receiver names (trainguard.fleet), so only characters that need no quoting.
HOST_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# The arguments by which a training command names where it writes (trainguard.process,
# rule 3): sd-scripts, diffusers examples and the HF Trainer all use --output_dir.
DEFAULT_OUTPUT_FLAGS = ("--output_dir", "--output-dir", "--outdir", "--out_dir")
FLAG_RE = re.compile(r"^--?[A-Za-z0-9][A-Za-z0-9_.-]*$")
DEFAULT_EXPORTER_LISTEN = "127.0.0.1:9842"
DEFAULT_REMEDIATOR_LISTEN = "127.0.0.1:9843"
LAUNCH_VIA = ("direct", "systemd-run")

T = TypeVar("T")


class ConfigError(Exception):
    """A config problem, already phrased for a person: ``file: key.path: what was expected``."""

    def __init__(self, file: str | Path, keypath: str, message: str) -> None:
        self.file = str(file)
        self.keypath = keypath
        self.message = message
        where = f"{self.file}: {keypath}: " if keypath else f"{self.file}: "
        super().__init__(where + message)


@dataclass(frozen=True)
class Listen:
    """A ``HOST:PORT`` address (``[::1]:9842`` for IPv6)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(text: str) -> Listen:
    """Parse ``HOST:PORT``; raise ValueError with a readable reason."""
    if not isinstance(text, str) or not text:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:9842")
    if text.startswith("["):
        host, sep, port_s = text[1:].partition("]:")
    else:
        host, sep, port_s = text.rpartition(":")
    if not sep or not host or not port_s.isdigit():
        raise ValueError(f"expected HOST:PORT, e.g. 127.0.0.1:9842, got {text!r}")
    port = int(port_s)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0..65535")
    return Listen(host, port)


@dataclass(frozen=True)
class SlurmConfig:
    """Slurm owns the job: the remediator requeues it instead of starting anything itself.

    Why: a process started outside the allocation is not part of the Slurm job (the job
    ends FAILED and its resources are freed), so for such a job nothing is ever launched
    locally (remediator.slurm).  The job's id is read from its training process
    (``SLURM_JOB_ID`` in /proc/PID/environ, else ``scontrol pidinfo``); only when no
    process of it lives is it looked up by ``job_name`` among this user's jobs.
    """

    job_name: str             # the Slurm job name (#SBATCH --job-name); default: the job's
    # How long the remediator waits after a requeue for Slurm to run the job again before
    # it reports the job as requeued but still pending (a busy cluster is not a failure).
    start_timeout_seconds: float = 600.0


@dataclass(frozen=True)
class LaunchConfig:
    """How to (re)start a job.  Exactly one of ``script`` and ``command`` is set; with
    ``slurm``, ``script`` is the batch script (what was given to ``sbatch``)."""

    workdir: Path
    script: Path | None = None
    command: tuple[str, ...] | None = None
    resume_flag: str = "--resume"
    env: Mapping[str, str] = field(default_factory=dict)
    slurm: SlurmConfig | None = None


@dataclass(frozen=True)
class JobConfig:
    """One training run that trainguard watches and may resume."""

    name: str
    output_dir: Path
    launch: LaunchConfig | None = None
    log_file: Path | None = None
    # None: Prometheus' global start-up grace tunable alone applies; a value here
    # lengthens it for this job (the exporter publishes it, the rules take the larger).
    startup_grace_seconds: float | None = None
    # GPUs that belong to this job whatever NVML's process list says: indexes ("0") or
    # UUIDs ("GPU-..."), or ("all",).  Needed in containers (RunPod), where NVML reports
    # host pids that the container cannot see.  None: attribute by process only.
    gpus: tuple[str, ...] | None = None
    # A regular expression with a (?P<step>...) group, and optionally (?P<total>...), that
    # finds the step in one log line, for trainers whose progress bar is not a ``steps:``
    # tqdm bar (HF Trainer's has no description).  None: the ``steps:`` bar.
    step_pattern: str | None = None
    # The flags whose value names output_dir in this job's training command (the job
    # rule's third kind of root); the usual spellings unless the trainer has its own.
    output_flags: tuple[str, ...] = DEFAULT_OUTPUT_FLAGS


@dataclass(frozen=True)
class ExporterConfig:
    listen: Listen = field(default_factory=lambda: parse_listen(DEFAULT_EXPORTER_LISTEN))
    # How often the checkpoint collector may re-stat an output folder (seconds); a
    # scrape in between is served from the cache.
    checkpoint_rescan_seconds: float = 5.0
    # A save younger than this, with no RNG file yet, counts as "writing".
    writing_fresh_seconds: float = 300.0


@dataclass(frozen=True)
class RestartBudget:
    max_restarts: int = 3
    window_seconds: float = 6 * 3600.0
    backoff_seconds: float = 60.0  # doubled after each remediation inside the window


@dataclass(frozen=True)
class RemediatorConfig:
    listen: Listen = field(default_factory=lambda: parse_listen(DEFAULT_REMEDIATOR_LISTEN))
    token_file: Path | None = None
    state_path: Path | None = None  # SQLite file; default: beside the config file
    dry_run: bool = False
    restart_from_scratch: bool = True  # no usable checkpoint: start over (else give up)
    kill_grace_seconds: float = 30.0
    gpu_release_timeout_seconds: float = 60.0
    verify_alive_seconds: float = 10.0
    saving_wait_seconds: float = 900.0
    max_body_bytes: int = 1 << 20
    budget: RestartBudget = field(default_factory=RestartBudget)
    # How the resumed run is started: "direct" (a detached child) or "systemd-run" (a
    # transient unit of the user's systemd, outside the remediator's sandbox and cgroup).
    launch_via: str = "direct"
    # A refused incident is looked at again when its alert is delivered again this long
    # after the refusal (the person may have fixed the cause).
    refused_recheck_seconds: float = 300.0


NOTIFY_KINDS = ("discord", "slack", "telegram", "email", "webhook")
DEFAULT_ALERTMANAGER_URL = "http://127.0.0.1:9093"


@dataclass(frozen=True)
class Receiver:
    """One place people hear from trainguard (an Alertmanager integration).

    The secret (a webhook URL, a bot token, an SMTP password) lives only in
    ``secret_file``: the config may be shared or committed, the secret never is.  The
    file is read (and its 0600 mode checked) when the Alertmanager config is made
    (trainguard.alertmanager), not when the config is loaded: the exporter, which never
    needs it, must not need to see it.
    """

    kind: str                         # one of NOTIFY_KINDS
    secret_file: Path
    send_resolved: bool = True
    channel: str | None = None        # slack: overrides the webhook's channel
    chat_id: int | None = None        # telegram (required)
    api_url: str | None = None        # telegram: a Bot API server other than Telegram's
    to: str | None = None             # email (required)
    sender: str | None = None         # email "from" (required)
    smarthost: str | None = None      # email HOST:PORT (required)
    username: str | None = None       # email: SMTP user (default: the sender)


@dataclass(frozen=True)
class NotifyConfig:
    """Who hears about trainguard's alerts and decisions (``notify:``)."""

    receivers: tuple[Receiver, ...]
    # Where the remediator sends its own reports (the decision and its reason, which no
    # Prometheus rule can know): the Alertmanager the stack runs.
    alertmanager_url: str = DEFAULT_ALERTMANAGER_URL
    # Linked in messages (the remediator's status page); default: its listen address.
    status_url: str | None = None


def default_host() -> str:
    """This machine's short host name: what a fleet's scrape targets are labelled with
    unless the config says otherwise (deploy/README.md "A fleet of hosts")."""
    return socket.gethostname().split(".")[0] or "localhost"


@dataclass(frozen=True)
class Config:
    path: Path
    jobs: tuple[JobConfig, ...]
    exporter: ExporterConfig
    remediator: RemediatorConfig
    notify: NotifyConfig | None = None
    # The host these jobs run on: the `host` label Prometheus puts on this host's
    # targets.  The remediator acts only on alerts for it (an alert with no host label
    # is taken as its own: a single-host stack labels nothing).
    host: str = field(default_factory=default_host)

    def job(self, name: str) -> JobConfig | None:
        """The configured job with this exact name, or None."""
        for job in self.jobs:
            if job.name == name:
                return job
        return None


# --------------------------------------------------------------------------- parsing


class _Reader:
    """Walks the YAML tree, keeping the key path for error messages."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.base = file.parent

    def fail(self, keypath: str, message: str) -> ConfigError:
        return ConfigError(self.file, keypath, message)

    def mapping(self, value: Any, keypath: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(keypath, f"expected a mapping, got {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.fail(keypath, f"keys must be strings, got {key!r}")
            if key not in allowed:
                raise self.fail(
                    _join(keypath, key),
                    f"unknown key; expected one of: {', '.join(sorted(allowed))}",
                )
        return value

    def typed(self, value: Any, keypath: str, kind: type[T], what: str) -> T:
        # bool is an int in Python; a YAML `yes` where a number belongs is a mistake.
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise self.fail(keypath, f"expected {what}, got {_kind(value)}")
        return value

    def string(self, value: Any, keypath: str) -> str:
        text = self.typed(value, keypath, str, "a string")
        if not text:
            raise self.fail(keypath, "expected a non-empty string")
        return text

    def number(self, value: Any, keypath: str, minimum: float = 0.0) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(keypath, f"expected a number, got {_kind(value)}")
        if not math.isfinite(value):
            raise self.fail(keypath, f"expected a finite number, got {value}")
        if value < minimum:
            raise self.fail(keypath, f"expected a number >= {minimum:g}, got {value}")
        return float(value)

    def integer(self, value: Any, keypath: str, minimum: int = 0) -> int:
        number = self.typed(value, keypath, int, "an integer")
        if number < minimum:
            raise self.fail(keypath, f"expected an integer >= {minimum}, got {number}")
        return number

    def path(self, value: Any, keypath: str) -> Path:
        text = self.string(value, keypath)
        p = Path(text).expanduser()
        return (p if p.is_absolute() else self.base / p).resolve()

    def listen(self, value: Any, keypath: str) -> Listen:
        try:
            return parse_listen(self.string(value, keypath))
        except ValueError as exc:
            raise self.fail(keypath, str(exc)) from None

    def opt(self, data: dict[str, Any], key: str, keypath: str,
            conv: Callable[[Any, str], T], default: T) -> T:
        if key not in data or data[key] is None:
            return default
        return conv(data[key], _join(keypath, key))


def _join(keypath: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{keypath}[{key}]"
    return f"{keypath}.{key}" if keypath else key


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _launch(r: _Reader, data: Any, kp: str, job_name: str) -> LaunchConfig:
    d = r.mapping(data, kp, {"script", "command", "workdir", "resume_flag", "env", "slurm"})
    script = r.opt(d, "script", kp, r.path, None)
    command: tuple[str, ...] | None = None
    if d.get("command") is not None:
        raw = d["command"]
        if not isinstance(raw, list) or not raw:
            raise r.fail(_join(kp, "command"), "expected a non-empty list of strings")
        command = tuple(r.string(x, _join(_join(kp, "command"), i)) for i, x in enumerate(raw))
    if (script is None) == (command is None):
        raise r.fail(kp, "expected exactly one of 'script' or 'command'")
    if script is not None and not script.is_file():
        raise r.fail(_join(kp, "script"), f"no such file: {script} (a launch script that "
                                           "is not there can never be resumed)")
    workdir = r.opt(d, "workdir", kp, r.path, None)
    if workdir is None:
        workdir = script.parent if script is not None else r.base
    if not workdir.is_dir():
        raise r.fail(_join(kp, "workdir"), f"no such folder: {workdir}")
    resume_flag = r.opt(d, "resume_flag", kp, r.string, "--resume")
    if not FLAG_RE.match(resume_flag):
        raise r.fail(_join(kp, "resume_flag"),
                     f"expected a flag such as --resume, got {resume_flag!r}")
    env: dict[str, str] = {}
    if d.get("env") is not None:
        ekp = _join(kp, "env")
        raw_env = r.typed(d["env"], ekp, dict, "a mapping of NAME: value")
        for k, v in raw_env.items():
            if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
                raise r.fail(ekp, f"expected environment variable names, got {k!r}")
            if isinstance(v, bool) or not isinstance(v, str | int | float):
                raise r.fail(_join(ekp, k), f"expected a string, got {_kind(v)}")
            env[k] = str(v)
    slurm = None
    if d.get("slurm") is not None:
        slurm = _slurm(r, d["slurm"], _join(kp, "slurm"), job_name)
        if script is None:
            raise r.fail(_join(kp, "slurm"), "a Slurm job needs launch.script: its batch "
                                             "script (what you give to sbatch)")
    return LaunchConfig(workdir=workdir, script=script, command=command,
                        resume_flag=resume_flag, env=env, slurm=slurm)


def _slurm(r: _Reader, data: Any, kp: str, job_name: str) -> SlurmConfig:
    if data is True:
        data = {}
    d = r.mapping(data, kp, {"job_name", "start_timeout_seconds"})
    name = r.opt(d, "job_name", kp, r.string, job_name)
    if not JOB_NAME_RE.match(name):
        raise r.fail(_join(kp, "job_name"),
                     f"expected letters, digits, '_', '.', '-' only, got {name!r}")
    return SlurmConfig(job_name=name,
                       start_timeout_seconds=r.opt(d, "start_timeout_seconds", kp, r.number,
                                                   SlurmConfig.start_timeout_seconds))


def _job(r: _Reader, data: Any, kp: str) -> JobConfig:
    d = r.mapping(data, kp, {"name", "output_dir", "launch", "log_file", "startup_grace_seconds",
                             "gpus", "step_pattern", "output_flags"})
    for required in ("name", "output_dir"):
        if d.get(required) is None:
            raise r.fail(_join(kp, required), "required key is missing")
    name = r.string(d["name"], _join(kp, "name"))
    if not JOB_NAME_RE.match(name):
        raise r.fail(_join(kp, "name"),
                     f"expected letters, digits, '_', '.', '-' only, got {name!r}")
    launch = None if d.get("launch") is None else _launch(r, d["launch"], _join(kp, "launch"),
                                                          name)
    return JobConfig(
        name=name,
        output_dir=r.path(d["output_dir"], _join(kp, "output_dir")),
        launch=launch,
        log_file=r.opt(d, "log_file", kp, r.path, None),
        startup_grace_seconds=r.opt(d, "startup_grace_seconds", kp, r.number, None),
        gpus=r.opt(d, "gpus", kp, lambda v, k: _gpus(r, v, k), None),
        step_pattern=r.opt(d, "step_pattern", kp, lambda v, k: _step_pattern(r, v, k), None),
        output_flags=r.opt(d, "output_flags", kp, lambda v, k: _flags(r, v, k),
                           DEFAULT_OUTPUT_FLAGS),
    )


def _flags(r: _Reader, value: Any, kp: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise r.fail(kp, "expected a non-empty list of flags such as --output_dir")
    out = []
    for i, item in enumerate(value):
        text = r.string(item, _join(kp, i))
        if not FLAG_RE.match(text):
            raise r.fail(_join(kp, i), f"expected a flag such as --output_dir, got {text!r}")
        out.append(text)
    return tuple(out)


def _step_pattern(r: _Reader, value: Any, kp: str) -> str:
    text = r.string(value, kp)
    try:
        compiled = re.compile(text)
    except re.error as exc:
        raise r.fail(kp, f"not a valid regular expression: {exc}") from None
    if "step" not in compiled.groupindex:
        raise r.fail(kp, "expected a regular expression with a (?P<step>\\d+) group")
    return text


def _gpus(r: _Reader, value: Any, kp: str) -> tuple[str, ...]:
    if value == "all":
        return ("all",)
    if not isinstance(value, list) or not value:
        raise r.fail(kp, "expected 'all' or a list of GPU indexes / UUIDs")
    out = []
    for i, item in enumerate(value):
        ok = (isinstance(item, int) and not isinstance(item, bool) and item >= 0) or (
            isinstance(item, str) and (item.isdigit() or item.startswith(("GPU-", "MIG-"))))
        if not ok:
            raise r.fail(_join(kp, i), f"expected a GPU index or a UUID such as GPU-..., "
                                       f"got {item!r}")
        out.append(str(item))
    return tuple(out)


def _exporter(r: _Reader, data: Any, kp: str) -> ExporterConfig:
    d = r.mapping(data, kp, {"listen", "checkpoint_rescan_seconds", "writing_fresh_seconds"})
    dflt = ExporterConfig()
    return ExporterConfig(
        listen=r.opt(d, "listen", kp, r.listen, dflt.listen),
        checkpoint_rescan_seconds=r.opt(d, "checkpoint_rescan_seconds", kp, r.number,
                                        dflt.checkpoint_rescan_seconds),
        writing_fresh_seconds=r.opt(d, "writing_fresh_seconds", kp, r.number,
                                    dflt.writing_fresh_seconds),
    )


def _budget(r: _Reader, data: Any, kp: str) -> RestartBudget:
    d = r.mapping(data, kp, {"max_restarts", "window_seconds", "backoff_seconds"})
    dflt = RestartBudget()
    return RestartBudget(
        max_restarts=r.opt(d, "max_restarts", kp, r.integer, dflt.max_restarts),
        window_seconds=r.opt(d, "window_seconds", kp, r.number, dflt.window_seconds),
        backoff_seconds=r.opt(d, "backoff_seconds", kp, r.number, dflt.backoff_seconds),
    )


def _remediator(r: _Reader, data: Any, kp: str) -> RemediatorConfig:
    keys = {"listen", "token_file", "state_path", "dry_run", "restart_from_scratch",
            "kill_grace_seconds", "gpu_release_timeout_seconds", "verify_alive_seconds",
            "saving_wait_seconds", "max_body_bytes", "restart_budget", "launch_via",
            "refused_recheck_seconds"}
    d = r.mapping(data, kp, keys)
    dflt = RemediatorConfig()

    def boolean(v: Any, k: str) -> bool:
        return r.typed(v, k, bool, "true or false")

    return RemediatorConfig(
        listen=r.opt(d, "listen", kp, r.listen, dflt.listen),
        token_file=r.opt(d, "token_file", kp, r.path, None),
        state_path=r.opt(d, "state_path", kp, r.path, r.base / "trainguard-state.sqlite3"),
        dry_run=r.opt(d, "dry_run", kp, boolean, False),
        restart_from_scratch=r.opt(d, "restart_from_scratch", kp, boolean, True),
        kill_grace_seconds=r.opt(d, "kill_grace_seconds", kp, r.number, dflt.kill_grace_seconds),
        gpu_release_timeout_seconds=r.opt(d, "gpu_release_timeout_seconds", kp, r.number,
                                          dflt.gpu_release_timeout_seconds),
        verify_alive_seconds=r.opt(d, "verify_alive_seconds", kp, r.number,
                                   dflt.verify_alive_seconds),
        saving_wait_seconds=r.opt(d, "saving_wait_seconds", kp, r.number,
                                  dflt.saving_wait_seconds),
        max_body_bytes=r.opt(d, "max_body_bytes", kp,
                             lambda v, k: r.integer(v, k, minimum=1024), dflt.max_body_bytes),
        budget=r.opt(d, "restart_budget", kp, lambda v, k: _budget(r, v, k), RestartBudget()),
        launch_via=r.opt(d, "launch_via", kp, lambda v, k: _choice(r, v, k, LAUNCH_VIA),
                         dflt.launch_via),
        refused_recheck_seconds=r.opt(d, "refused_recheck_seconds", kp, r.number,
                                      dflt.refused_recheck_seconds),
    )


# Keys that would put a secret into the config: refused with a pointer to secret_file.
_SECRET_KEYS = {"url", "webhook_url", "api_url_secret", "token", "bot_token", "password",
                "auth_password", "secret", "api_key"}
_RECEIVER_KEYS = {
    "discord": set(), "webhook": set(), "slack": {"channel"},
    "telegram": {"chat_id", "api_url"},
    "email": {"to", "from", "smarthost", "username"},
}
_EMAIL_RE = re.compile(r"^[^@\s<>,]+@[^@\s<>,]+$")


def _http_url(r: _Reader, value: Any, kp: str) -> str:
    text = r.string(value, kp)
    if not re.match(r"^https?://[^\s/]+", text):
        raise r.fail(kp, f"expected an http:// or https:// URL, got {text!r}")
    return text


def _receiver(r: _Reader, data: Any, kp: str) -> Receiver:
    if not isinstance(data, dict):
        raise r.fail(kp, f"expected a mapping, got {_kind(data)}")
    kind = data.get("kind")
    if kind is None:
        raise r.fail(_join(kp, "kind"), f"required key is missing; one of "
                                        f"{', '.join(NOTIFY_KINDS)}")
    kind = _choice(r, kind, _join(kp, "kind"), NOTIFY_KINDS)
    for key in data:
        if isinstance(key, str) and key in _SECRET_KEYS:
            raise r.fail(_join(kp, key), "secrets never go in the config: put it alone in a "
                                         "file readable only by you (chmod 600) and name that "
                                         "file with secret_file")
    d = r.mapping(data, kp, {"kind", "secret_file", "send_resolved", *_RECEIVER_KEYS[kind]})
    if d.get("secret_file") is None:
        raise r.fail(_join(kp, "secret_file"), "required key is missing (the file holding "
                                               "the webhook URL, bot token or password)")

    def need(key: str) -> Any:
        if d.get(key) is None:
            raise r.fail(_join(kp, key), f"required for kind {kind}")
        return d[key]

    chat_id = None
    to = sender = smarthost = username = None
    if kind == "telegram":
        chat_id = r.typed(need("chat_id"), _join(kp, "chat_id"), int, "an integer chat id")
        if chat_id == 0:
            raise r.fail(_join(kp, "chat_id"), "expected a non-zero chat id")
    if kind == "email":
        to = r.string(need("to"), _join(kp, "to"))
        sender = r.string(need("from"), _join(kp, "from"))
        for key, addr in (("to", to), ("from", sender)):
            if not _EMAIL_RE.match(addr):
                raise r.fail(_join(kp, key), f"expected an e-mail address, got {addr!r}")
        smarthost = r.string(need("smarthost"), _join(kp, "smarthost"))
        host, sep, port = smarthost.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise r.fail(_join(kp, "smarthost"), f"expected HOST:PORT such as "
                                                 f"smtp.example.org:587, got {smarthost!r}")
        username = r.opt(d, "username", kp, r.string, None)
    return Receiver(
        kind=kind, secret_file=r.path(d["secret_file"], _join(kp, "secret_file")),
        send_resolved=r.opt(d, "send_resolved", kp,
                            lambda v, k: r.typed(v, k, bool, "true or false"), True),
        channel=r.opt(d, "channel", kp, r.string, None), chat_id=chat_id,
        api_url=r.opt(d, "api_url", kp, lambda v, k: _http_url(r, v, k), None),
        to=to, sender=sender, smarthost=smarthost, username=username)


def _notify(r: _Reader, data: Any, kp: str) -> NotifyConfig:
    d = r.mapping(data, kp, {"receivers", "alertmanager_url", "status_url"})
    raw = d.get("receivers")
    if not isinstance(raw, list) or not raw:
        raise r.fail(_join(kp, "receivers"), "expected a non-empty list of receivers, e.g. "
                                             "[{kind: discord, secret_file: secrets/discord}]")
    receivers = tuple(_receiver(r, x, _join(_join(kp, "receivers"), i))
                      for i, x in enumerate(raw))
    return NotifyConfig(
        receivers=receivers,
        alertmanager_url=r.opt(d, "alertmanager_url", kp, lambda v, k: _http_url(r, v, k),
                               DEFAULT_ALERTMANAGER_URL),
        status_url=r.opt(d, "status_url", kp, lambda v, k: _http_url(r, v, k), None))


def _choice(r: _Reader, value: Any, kp: str, allowed: tuple[str, ...]) -> str:
    text = r.string(value, kp)
    if text not in allowed:
        raise r.fail(kp, f"expected one of {', '.join(allowed)}, got {text!r}")
    return text


def parse_config(data: Any, file: Path) -> Config:
    """Validate an already-parsed YAML document; ``file`` anchors relative paths."""
    file = Path(file).resolve()
    r = _Reader(file)
    if data is None:
        data = {}
    top = r.mapping(data, "", {"host", "jobs", "exporter", "remediator", "notify"})
    host = r.opt(top, "host", "", r.string, None)
    if host is not None and not HOST_NAME_RE.match(host):
        raise r.fail("host", "expected a host name of letters, digits, '_', '.', '-' "
                             f"(the `host` label of this host's scrape targets), got {host!r}")
    raw_jobs = top.get("jobs")
    if not isinstance(raw_jobs, list) or not raw_jobs:
        raise r.fail("jobs", "expected a non-empty list of jobs")
    jobs = tuple(_job(r, j, _join("jobs", i)) for i, j in enumerate(raw_jobs))
    names: dict[str, int] = {}
    dirs: dict[Path, int] = {}
    scripts: dict[Path, int] = {}
    for i, job in enumerate(jobs):
        kp = _join("jobs", i)
        if job.name in names:
            raise r.fail(_join(kp, "name"), f"duplicate job name {job.name!r}")
        names[job.name] = i
        # Two jobs on one folder would each see the other's run as its own.
        if job.output_dir in dirs:
            raise r.fail(_join(kp, "output_dir"), f"{job.output_dir} is already the output_dir "
                                                  f"of jobs[{dirs[job.output_dir]}]")
        dirs[job.output_dir] = i
        script = job.launch.script if job.launch is not None else None
        if script is not None:
            if script in scripts:
                raise r.fail(_join(_join(kp, "launch"), "script"),
                             f"{script} is already the launch script of jobs[{scripts[script]}]")
            scripts[script] = i
    exporter = ExporterConfig() if top.get("exporter") is None else _exporter(
        r, top["exporter"], "exporter")
    raw_remediator = top.get("remediator")
    remediator = _remediator(r, {} if raw_remediator is None else raw_remediator, "remediator")
    notify = None if top.get("notify") is None else _notify(r, top["notify"], "notify")
    return Config(path=file, jobs=jobs, exporter=exporter, remediator=remediator,
                  notify=notify, host=host if host is not None else default_host())


def read_yaml(path: str | Path) -> tuple[Path, Any]:
    """``(file, data)`` of a YAML file trainguard reads (the config, a fleet file); every
    failure is a :class:`ConfigError` naming the file, and the line for bad YAML."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(file, "", "no such file") from None
    except IsADirectoryError:
        raise ConfigError(file, "", "is a directory, expected a YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file, "", f"cannot read: {exc}") from None
    try:
        return file, yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(file, "", f"{where}{problem}") from None


def load_config(path: str | Path) -> Config:
    """Read and validate the config file; every failure is a :class:`ConfigError`."""
    file, data = read_yaml(path)
    return parse_config(data, file)
