//! One protocol message on the socket: 8 bytes, little-endian, with at
//! most one file descriptor (SCM_RIGHTS).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Sends `value`, with `fd` if given. A full buffer past the socket's write
/// timeout is `WouldBlock`, an error like any other.
pub fn send(socket: &UnixStream, value: i64, fd: Option<RawFd>) -> io::Result<()> {
    let bytes = value.to_le_bytes();
    let sent = match fd {
        Some(fd) => socket.send_with_fd(&bytes[..], fd),
        None => socket.send_with_fds::<&[u8]>(&[&bytes[..]], &[]),
    }
    .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    // A short send of 8 bytes leaves the stream out of step: treat it as broken.
    if sent == bytes.len() { Ok(()) } else { Err(io::ErrorKind::WriteZero.into()) }
}

/// A message being received, possibly over several reads.
#[derive(Default)]
pub struct Receiver {
    bytes: [u8; 8],
    have: usize,
    fd: Option<File>,
}

impl Receiver {
    /// Reads what the socket has of the next message. `Ok(None)` if it is
    /// not complete yet (a non-blocking socket had no more); an error
    /// `UnexpectedEof` when the peer closed the connection.
    pub fn recv(&mut self, socket: &UnixStream) -> io::Result<Option<(i64, Option<File>)>> {
        while self.have < 8 {
            match socket.recv_with_fd(&mut self.bytes[self.have..]) {
                Ok((0, _)) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok((n, fd)) => {
                    self.have += n;
                    // A second descriptor for one message would be a
                    // protocol error; the first one stays, the other closes.
                    if self.fd.is_none() {
                        self.fd = fd;
                    }
                }
                Err(e) if e.errno() == libc::EAGAIN => return Ok(None),
                Err(e) if e.errno() == libc::EINTR => {}
                Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
            }
        }
        self.have = 0;
        Ok(Some((i64::from_le_bytes(self.bytes), self.fd.take())))
    }
}

/// Waits up to `timeout_ms` (-1: for ever) for any of `fds` to be readable;
/// returns which are (readable or closed). A signal ends the wait with
/// `Interrupted`.
pub fn poll_readable(fds: &[RawFd], timeout_ms: i32) -> io::Result<Vec<bool>> {
    let mut polls: Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    // SAFETY: `polls` is a valid array of pollfd of the length given.
    let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(polls.iter().map(|p| p.revents != 0).collect())
}

/// How many bytes (0 at end of stream) the socket could give, without
/// taking them or waiting.
pub fn peek(socket: &UnixStream) -> io::Result<usize> {
    let mut byte = 0u8;
    // SAFETY: recv writes at most 1 byte into `byte`; the descriptor is open.
    let n = unsafe { libc::recv(socket.as_raw_fd(), (&raw mut byte).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}
