"""The hosted SFTP mailbox (design section 9), on paramiko.

The user name is the party id; a party logs in with one of its registered SSH keys and sees its own
mailbox as ``/`` with four folders: ``/inbox`` (uploads), ``/outbox`` (replies), ``/archive`` (processed
inputs), ``/failed`` (inputs that could not be processed, each with ``NAME.error.txt``). Nothing outside
the mailbox can be named: paths are normalised against ``/`` and their real path must stay inside; no
symbolic link is followed or created.

An upload to ``/inbox`` is written to a private staging file and enters the inbox only when the client
closes it, so the inbox holds complete files only. A handle that is still open when the session dies
(the connection dropped, the client was killed) is an aborted upload: it goes to ``/failed`` with the
reason, never to processing. ``*.part`` files are written in place and wait until renamed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
import re
import secrets
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import paramiko
from paramiko import SFTPAttributes, SFTPHandle, SFTPServer, SFTPServerInterface
from paramiko.sftp import (
    SFTP_FAILURE,
    SFTP_NO_SUCH_FILE,
    SFTP_OK,
    SFTP_OP_UNSUPPORTED,
    SFTP_PERMISSION_DENIED,
)
from sqlalchemy.exc import SQLAlchemyError

from adapters import sftp_keys
from adapters.sftp_worker import (
    FOLDERS,
    PART,
    Layout,
    MailboxWorker,
    fail_upload,
    lock_upload,
    mailbox,
    name_problem,
    upload_in_progress,
)
from gateway.context import Gateway

log = logging.getLogger("roadcargo.sftp")

HOST_KEY_FILE = "sftp_host_ed25519_key"
MAX_CONNECTIONS = 200
RECHECK_SECONDS = 10.0  # how often open sessions are checked against revoked keys and suspended parties
_PARTY_ID = re.compile(r"^[0-9]{8}$")


class Refusal(int):
    """An SFTP status code with the sentence the client is told (paramiko sends only the code's name)."""

    message: str

    def __new__(cls, code: int, message: str) -> Refusal:
        refusal = int.__new__(cls, code)
        refusal.message = message
        return refusal


def _denied(message: str) -> Refusal:
    return Refusal(SFTP_PERMISSION_DENIED, message)


def _missing(path: str) -> Refusal:
    return Refusal(SFTP_NO_SUCH_FILE, f"{path}: no such file in your mailbox")


def _os_error(exc: OSError) -> int:
    return SFTPServer.convert_errno(exc.errno)


# -- host key --------------------------------------------------------------------------------------


def ensure_host_key(data_dir: Path) -> Path:
    """The server's Ed25519 host key, generated once with ssh-keygen (paramiko cannot make Ed25519 keys)
    and kept across restarts, so that partners' known_hosts entries stay valid."""
    path = data_dir / HOST_KEY_FILE
    if path.exists():
        return path
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f".{HOST_KEY_FILE}.{secrets.token_hex(4)}"
    try:
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "roadcargo-sftp", "-f", str(tmp)],
            check=True,
            capture_output=True,
            timeout=30,
        )
    except FileNotFoundError:
        raise RuntimeError(
            "ssh-keygen is needed to create the SFTP host key: install openssh-client"
        ) from None
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(
            f"ssh-keygen could not create the SFTP host key: {exc.stderr.decode()[:200]}"
        ) from None
    try:
        os.link(tmp, path)  # never replaces a key another process made meanwhile
        os.replace(tmp.with_name(tmp.name + ".pub"), path.with_name(path.name + ".pub"))
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + ".pub").unlink(missing_ok=True)
    log.info("sftp: created the host key %s", path)
    return path


def load_host_key(data_dir: Path) -> paramiko.PKey:
    return paramiko.Ed25519Key.from_private_key_file(str(ensure_host_key(data_dir)))


def host_key_line(key: paramiko.PKey) -> str:
    """``ssh-ed25519 AAAA...``, as partners put it in known_hosts (``[host]:port`` before it)."""
    return f"{key.get_name()} {key.get_base64()}"


# -- authentication --------------------------------------------------------------------------------


class _Login(paramiko.ServerInterface):
    """Public-key authentication against the keys registered for the party named as user."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.party_id: str | None = None
        self.key: bytes | None = None  # the key the party logged in with, checked again while it stays

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        # Called once to ask whether the key would do and again once its signature is verified.
        if not _PARTY_ID.match(username):
            return paramiko.AUTH_FAILED
        blob = key.asbytes()
        try:
            refusal = sftp_keys.login_refusal(self.gw, username, blob)
        except SQLAlchemyError as exc:
            log.warning("sftp: cannot check the key of %s: the database is unavailable (%s)", username, exc)
            return paramiko.AUTH_FAILED
        if refusal is not None:
            log.info("sftp: key %s refused for party %s: %s", sftp_keys.fingerprint(blob), username, refusal)
            return paramiko.AUTH_FAILED
        self.party_id = username
        self.key = blob
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        return name == "sftp" and bool(super().check_channel_subsystem_request(channel, name))


# -- the mailbox as a file system -------------------------------------------------------------------


class _Session(SFTPServer):
    """paramiko's SFTP subsystem, telling the client why a request was refused."""

    def _send_status(self, request_number: int, code: int, desc: str | None = None) -> None:
        if desc is None and isinstance(code, Refusal):
            desc = code.message
        super()._send_status(request_number, int(code), desc)


class _File(SFTPHandle):
    """A file opened for reading, or a ``*.part`` written in place."""

    def __init__(self, flags: int, stream: Any, writable: bool, box: _Mailbox, path: Path) -> None:
        super().__init__(flags)
        self.readfile = stream
        if writable:
            self.writefile = stream
        self.writable = writable
        self.box = box
        self.path = path

    def stat(self) -> SFTPAttributes | int:
        try:
            return SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))
        except OSError as exc:
            return _os_error(exc)

    def chattr(self, attr: SFTPAttributes) -> int:
        if not self.writable:
            return _denied("only files you are uploading can be changed")
        return _apply_attributes(self.readfile.fileno(), attr)

    def close(self) -> None:
        try:
            super().close()
        except OSError:
            log.exception("sftp: closing %s", self.path)
        finally:
            if self.writable:
                self.box.server.release(self.path)


class _Upload(_File):
    """An upload to ``/inbox/NAME``: staged privately, entering the inbox when closed (not aborted)."""

    def __init__(self, flags: int, stream: Any, box: _Mailbox, staged: Path, name: str) -> None:
        super().__init__(flags, stream, True, box, box.layout.inbox / name)
        self.staged = staged
        self.name = name
        self.limit = box.gw.config.server.max_body_bytes
        self.refused: str | None = None

    def write(self, offset: int, data: bytes) -> int:
        # Refused as it grows, so an oversized file neither fills the disk nor reaches the inbox.
        if offset + len(data) > self.limit:
            self.refused = (
                f"the file is over the limit of {self.limit} bytes ([server] max_body_bytes): "
                "split it into smaller files"
            )
            return Refusal(SFTP_FAILURE, self.refused)
        written: int = super().write(offset, data)
        return written

    def close(self) -> None:
        # Never raises: paramiko calls this from its session thread, also after the session died. The
        # file enters the inbox while its upload lock is still held, so that no process takes it for
        # the leftover of a dead one in between.
        box = self.box
        try:
            why = self.refused or (
                "the SFTP session ended while the file was still open" if box.ended else None
            )
            if why is None:
                try:
                    self.writefile.flush()
                    os.fsync(self.writefile.fileno())
                except OSError as exc:
                    why = f"the gateway could not store the file: {exc.strerror or exc}"
            if why is not None:
                fail_upload(box.gw, box.layout, box.party_id, "mailbox", self.staged, self.name, why)
                return
            target = box.layout.inbox / self.name
            try:
                os.link(self.staged, target)  # enters the inbox whole, and never over another file
            except FileExistsError:
                fail_upload(
                    box.gw,
                    box.layout,
                    box.party_id,
                    "mailbox",
                    self.staged,
                    self.name,
                    f"another file named {self.name} reached the inbox first",
                )
                return
            self.staged.unlink()
            _fsync_dir(target.parent)
            log.info("sftp: party %s uploaded %s", box.party_id, self.name)
            if box.server.worker is not None:
                box.server.worker.submit(box.party_id, self.name)
        except Exception:
            log.exception("sftp: could not complete the upload of %s by party %s", self.name, box.party_id)
        finally:
            super().close()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _apply_attributes(fd: int, attr: SFTPAttributes) -> int:
    """Times are kept (``put -p``); permissions and owners are the gateway's, so they are ignored."""
    try:
        if attr._flags & attr.FLAG_AMTIME:
            os.utime(fd, (attr.st_atime, attr.st_mtime))
        if attr._flags & attr.FLAG_SIZE:
            os.ftruncate(fd, attr.st_size)
    except OSError as exc:
        return _os_error(exc)
    return SFTP_OK


class _Mailbox(SFTPServerInterface):
    """One party's mailbox, as one SFTP session sees it."""

    def __init__(self, login: _Login, server: SftpServer, *args: Any, **kwargs: Any) -> None:
        super().__init__(login, *args, **kwargs)
        assert login.party_id is not None  # the subsystem is only reachable after authentication
        self.party_id: str = login.party_id
        self.server = server
        self.gw = server.gw
        self.layout: Layout = mailbox(server.gw, self.party_id)
        self.root = self.layout.inbox.parent
        self.ended = False

    def session_started(self) -> None:
        self.layout.create()
        log.info("sftp: party %s logged in", self.party_id)

    def session_ended(self) -> None:
        # paramiko closes the handles still open right after this: those uploads did not complete.
        self.ended = True
        log.info("sftp: party %s logged out", self.party_id)

    # paths

    def canonicalize(self, path: str) -> str:
        # normpath keeps a leading '//' (POSIX leaves it to the system): collapse it too.
        return "/" + "/".join(p for p in posixpath.normpath("/" + path).split("/") if p)

    def _locate(self, path: str) -> tuple[str | None, str | None]:
        """(folder, name) of a client path: (None, None) is the mailbox root. Raises KeyError for
        anything else: there is nothing else to see."""
        parts = [p for p in posixpath.normpath("/" + path).split("/") if p]
        if not parts:
            return None, None
        if parts[0] not in FOLDERS or len(parts) > 2:
            raise KeyError(path)
        return parts[0], parts[1] if len(parts) == 2 else None

    def _real(self, folder: str | None, name: str | None) -> Path:
        real = (
            self.root if folder is None else self.root / folder if name is None else self.root / folder / name
        )
        # No symbolic link inside the mailbox may lead out of it (the client cannot make one; this
        # guards against one put there by other means).
        inside = os.path.realpath(real)
        root = os.path.realpath(self.root)
        if inside != root and not inside.startswith(root + os.sep):
            raise KeyError(str(real))
        if name is not None and os.path.islink(real):
            raise KeyError(str(real))
        return real

    def _resolve(self, path: str) -> tuple[str | None, str | None, Path]:
        folder, name = self._locate(path)
        return folder, name, self._real(folder, name)

    # reading

    def list_folder(self, path: str) -> list[SFTPAttributes] | int:
        try:
            folder, name, real = self._resolve(path)
        except KeyError:
            return _missing(path)
        if name is not None:
            return Refusal(SFTP_FAILURE, f"{path} is a file, not a folder")
        try:
            if folder is None:
                return [SFTPAttributes.from_stat(os.stat(self.root / f), f) for f in FOLDERS]
            out = []
            for entry in os.scandir(real):
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                out.append(SFTPAttributes.from_stat(entry.stat(follow_symlinks=False), entry.name))
            return out
        except OSError as exc:
            return _os_error(exc)

    def stat(self, path: str) -> SFTPAttributes | int:
        try:
            _folder, _name, real = self._resolve(path)
            return SFTPAttributes.from_stat(os.stat(real))
        except KeyError:
            return _missing(path)
        except OSError as exc:
            return _os_error(exc)

    def lstat(self, path: str) -> SFTPAttributes | int:
        return self.stat(path)

    def open(self, path: str, flags: int, attr: SFTPAttributes) -> SFTPHandle | int:
        try:
            folder, name, real = self._resolve(path)
        except KeyError:
            return _missing(path)
        if name is None:
            return Refusal(SFTP_FAILURE, f"{path} is a folder")
        writing = bool(flags & (os.O_WRONLY | os.O_RDWR))
        try:
            if not writing:
                return _File(
                    flags, os.fdopen(os.open(real, os.O_RDONLY | os.O_NOFOLLOW), "rb"), False, self, real
                )
            if folder != "inbox":
                return _denied("only /inbox takes uploads; /outbox, /archive and /failed are for reading")
            problem = name_problem(name)
            if problem is not None:
                return _denied(problem)
            if name.endswith(PART):
                return self._open_part(flags, real)
            return self._open_upload(flags, name, real)
        except OSError as exc:
            return _os_error(exc)

    def _open_part(self, flags: int, real: Path) -> SFTPHandle | int:
        if not self.server.claim(real):
            return Refusal(SFTP_FAILURE, f"{real.name} is being written by another session")
        try:
            # Opened for reading too, so that the handle can be stat'ed; the client's flags still apply.
            mode = (flags & ~(os.O_WRONLY | os.O_RDWR)) | os.O_RDWR | os.O_NOFOLLOW
            fd = os.open(real, mode, 0o640)
            if not lock_upload(fd):  # another gateway process on this data directory writes it
                os.close(fd)
                self.server.release(real)
                return Refusal(SFTP_FAILURE, f"{real.name} is being written by another session")
            return _File(flags, os.fdopen(fd, "r+b"), True, self, real)
        except BaseException:
            self.server.release(real)
            raise

    def _open_upload(self, flags: int, name: str, real: Path) -> SFTPHandle | int:
        if real.exists():
            return _denied(
                f"{name} is already in the inbox, waiting to be processed: upload under another name"
            )
        if not self.server.claim(real):
            return Refusal(SFTP_FAILURE, f"{name} is being uploaded by another session")
        try:
            self.layout.uploads.mkdir(parents=True, exist_ok=True, mode=0o750)
            staged = self.layout.uploads / f"{secrets.token_hex(8)}-{name}"
            fd = os.open(staged, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
            lock_upload(fd)  # a new file: the lock is ours; it tells other processes the upload is alive
            return _Upload(flags & ~os.O_APPEND, os.fdopen(fd, "r+b"), self, staged, name)
        except BaseException:
            self.server.release(real)
            raise

    # changing

    def remove(self, path: str) -> int:
        try:
            folder, name, real = self._resolve(path)
        except KeyError:
            return _missing(path)
        if name is None:
            return _denied("the mailbox folders cannot be removed")
        if folder == "inbox" and not name.endswith(PART):
            return _denied(f"{name} is waiting to be processed and cannot be removed")
        if self.server.busy(real) or upload_in_progress(real):
            return Refusal(SFTP_FAILURE, f"{name} is being written")
        try:
            os.unlink(real)
        except OSError as exc:
            return _os_error(exc)
        return SFTP_OK

    def rename(self, oldpath: str, newpath: str) -> int:
        try:
            folder, name, real = self._resolve(oldpath)
            new_folder, new_name = self._locate(newpath)
            if new_name is None:
                raise KeyError(newpath)
            target = self._real(new_folder, new_name)
        except KeyError:
            return _missing(oldpath)
        if name is None:
            return _denied("the mailbox folders cannot be renamed")
        if folder != new_folder or folder not in ("inbox", "outbox"):
            return _denied("files can be renamed within /inbox or /outbox only")
        problem = name_problem(new_name)
        if problem is not None:
            return _denied(problem)
        if folder == "inbox" and not name.endswith(PART):
            return _denied(f"{name} is waiting to be processed and cannot be renamed")
        if self.server.busy(real) or upload_in_progress(real):
            return Refusal(SFTP_FAILURE, f"{name} is still being written: close it first")
        try:
            os.link(real, target)  # never over an existing file
            os.unlink(real)
            _fsync_dir(target.parent)
        except FileExistsError:
            return Refusal(SFTP_FAILURE, f"{new_name} exists already")
        except OSError as exc:
            return _os_error(exc)
        if folder == "inbox" and not new_name.endswith(PART):
            log.info("sftp: party %s renamed %s to %s", self.party_id, name, new_name)
            if self.server.worker is not None:
                self.server.worker.submit(self.party_id, new_name)
        return SFTP_OK

    def posix_rename(self, oldpath: str, newpath: str) -> int:
        return self.rename(oldpath, newpath)

    def chattr(self, path: str, attr: SFTPAttributes) -> int:
        try:
            folder, name, real = self._resolve(path)
        except KeyError:
            return _missing(path)
        if folder != "inbox" or name is None:
            return _denied("only files in /inbox can be changed")
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            return _os_error(exc)
        try:
            attr._flags &= ~attr.FLAG_SIZE  # a path's size is not changed; only an open handle's
            return _apply_attributes(fd, attr)
        finally:
            os.close(fd)

    def mkdir(self, path: str, attr: SFTPAttributes) -> int:
        return _denied("the mailbox has fixed folders: /inbox, /outbox, /archive, /failed")

    def rmdir(self, path: str) -> int:
        return _denied("the mailbox has fixed folders: /inbox, /outbox, /archive, /failed")

    def symlink(self, target_path: str, path: str) -> int:
        return _denied("symbolic links are not allowed in the mailbox")

    def readlink(self, path: str) -> str | int:
        return Refusal(SFTP_OP_UNSUPPORTED, "there are no symbolic links in the mailbox")


# -- the server --------------------------------------------------------------------------------------


class SftpServer:
    """Listens for partners, one thread per connection during the key exchange (paramiko blocks there),
    then paramiko's own threads; uploads complete into the worker's queue."""

    def __init__(
        self,
        gw: Gateway,
        worker: MailboxWorker | None,
        host: str = "127.0.0.1",
        port: int = 2222,
        recheck_seconds: float = RECHECK_SECONDS,
    ) -> None:
        self.gw = gw
        self.worker = worker
        self.host = host
        self.port = port
        self.host_key = load_host_key(gw.config.data_path)
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._transports: dict[paramiko.Transport, _Login] = {}
        self._writing: set[Path] = set()
        self.recheck_seconds = recheck_seconds
        self._recheck: threading.Thread | None = None

    @property
    def host_key_line(self) -> str:
        return host_key_line(self.host_key)

    def start(self) -> None:
        """Bind (raising OSError when the port is taken) and serve in the background."""
        listener = socket.create_server((self.host, self.port), reuse_port=False)
        listener.settimeout(None)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, name="roadcargo-sftp-accept", daemon=True)
        self._thread.start()
        self._recheck = threading.Thread(
            target=self._recheck_logins, name="roadcargo-sftp-recheck", daemon=True
        )
        self._recheck.start()
        log.info(
            "sftp: mailbox server on %s:%d, host key %s",
            self.host,
            self.port,
            sftp_keys.fingerprint(self.host_key.asbytes()),
        )

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes accept(); closing alone may not
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        with self._lock:
            transports = list(self._transports)
            self._transports.clear()
        for transport in transports:
            transport.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._recheck is not None:
            self._recheck.join(timeout=5)

    # logins that lost their right: a revoked key, a suspended party

    def _recheck_logins(self) -> None:
        while not self._stopping.wait(self.recheck_seconds):
            try:
                self.recheck_logins()
            except SQLAlchemyError as exc:
                log.warning("sftp: cannot recheck the open sessions: %s", exc)

    def recheck_logins(self) -> int:
        """Close the connections whose key was revoked or whose party was suspended since they logged
        in; returns how many were closed."""
        with self._lock:
            logged_in = [(t, login) for t, login in self._transports.items() if login.key is not None]
        closed = 0
        for transport, login in logged_in:
            assert login.party_id is not None and login.key is not None
            refusal = sftp_keys.login_refusal(self.gw, login.party_id, login.key)
            if refusal is not None and transport.is_active():
                log.warning("sftp: closed the session of party %s: %s", login.party_id, refusal)
                transport.close()
                closed += 1
        return closed

    # files being written, across sessions

    def claim(self, path: Path) -> bool:
        with self._lock:
            if path in self._writing:
                return False
            self._writing.add(path)
            return True

    def release(self, path: Path) -> None:
        with self._lock:
            self._writing.discard(path)

    def busy(self, path: Path) -> bool:
        with self._lock:
            return path in self._writing

    # connections

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, address = self._listener.accept()
            except OSError as exc:
                if self._stopping.is_set() or exc.errno in (errno.EBADF, errno.EINVAL):
                    return  # the listener was closed by stop()
                log.warning("sftp: accept failed: %s", exc)
                continue
            with self._lock:
                self._transports = {t: v for t, v in self._transports.items() if t.is_active()}
                crowded = len(self._transports) >= MAX_CONNECTIONS
            if crowded:
                log.warning(
                    "sftp: refused a connection from %s: %d connections open", address[0], MAX_CONNECTIONS
                )
                sock.close()
                continue
            threading.Thread(
                target=self._connection, args=(sock, address), name="roadcargo-sftp-conn", daemon=True
            ).start()

    def _connection(self, sock: socket.socket, address: Any) -> None:
        try:
            transport = paramiko.Transport(sock)
            transport.handshake_timeout = 15
            transport.banner_timeout = 15
            transport.auth_timeout = 30
            transport.add_server_key(self.host_key)
            transport.set_subsystem_handler("sftp", _Session, _Mailbox, self)
            login = _Login(self.gw)
            with self._lock:
                if self._stopping.is_set():
                    transport.close()
                    return
                self._transports[transport] = login
            transport.start_server(server=login)
            # Probes a silent peer, so that a dead connection ends its session (and its open uploads).
            transport.set_keepalive(30)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            log.info("sftp: connection from %s ended during the handshake: %s", address[0], exc)
            sock.close()
        except Exception:
            log.exception("sftp: connection from %s failed", address[0])
            sock.close()
