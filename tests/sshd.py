"""A real OpenSSH server on 127.0.0.1 for tests (Debian ``openssh-server``), with keys generated per test session.

``SshServer(tmp).start()`` writes a host key, a client key, authorized_keys, a known_hosts line for the host key
and an sshd_config into ``tmp``, starts ``sshd -D`` on a free port in its own process group, and waits until it
answers. ``kill()`` ends sshd and every session process below it (a dropped connection); ``start()`` again brings
it back on the same port with the same keys.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def sshd_available() -> bool:
    return Path(SSHD).is_file() and shutil.which("ssh-keygen") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hwnas-test", "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL)
    return path.with_suffix(".pub").read_text().strip()


class SshServer:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        self.user = getpass.getuser()
        self.port = _free_port()
        self.host_key = self.root / "host_ed25519"
        self.client_key = self.root / "client_ed25519"
        self.known_hosts = self.root / "known_hosts"
        self.config = self.root / "sshd_config"
        self.log = self.root / "sshd.log"
        self.proc: subprocess.Popen | None = None
        host_pub = _keygen(self.host_key)
        client_pub = _keygen(self.client_key)
        (self.root / "authorized_keys").write_text(client_pub + "\n")
        key_type, key_b64 = host_pub.split()[:2]
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {key_type} {key_b64}\n")
        self.config.write_text("\n".join([
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"PidFile {self.root / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
            f"AllowUsers {self.user}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "Subsystem sftp internal-sftp",
            "LogLevel ERROR",
            "",
        ]))

    def start(self, timeout_s: float = 20.0) -> "SshServer":
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        log = open(self.log, "ab")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}: {self.log.read_text()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        return self
            except OSError:
                time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"sshd did not answer on 127.0.0.1:{self.port} within {timeout_s} s")

    def kill(self) -> None:
        """SIGKILL sshd and all its descendants (connection handlers and the commands they run)."""
        if self.proc is None:
            return
        try:
            procs = [psutil.Process(self.proc.pid)]
            procs += procs[0].children(recursive=True)
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        self.proc.wait(timeout=10)
        psutil.wait_procs(procs, timeout=5)
        self.proc = None

    def device_entry(self, python: str, **extra) -> dict:
        """A devices.yaml entry (as a dict) for onnxruntime on this sshd."""
        return {"runtime": "onnxruntime-ssh", "threads": 1,
                "ssh": {"host": "127.0.0.1", "port": self.port, "user": self.user, "key_file": str(self.client_key),
                        "known_hosts": str(self.known_hosts), "python": python, "workdir": str(self.root),
                        "connect_timeout_s": 10}, **extra}
