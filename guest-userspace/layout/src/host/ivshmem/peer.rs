//! A client of an ivshmem server, as QEMU's ivshmem-doorbell device and
//! `contrib/ivshmem-client` are: a host process that shares the memory and
//! rings the other clients, and is rung by them.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::wire::{Receiver, poll_readable};
use super::{Error, MAX_VECTORS, PROTOCOL_VERSION};

/// How long set-up waits for each of the server's first messages.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// The server sends a new client's own eventfds in one burst; once this
/// long passes without another, the client has all its vectors (the
/// protocol does not say how many there are).
const SETTLE: Duration = Duration::from_millis(100);
/// Messages [`Peer::update`] takes at most per call, so that a server that
/// floods its clients cannot hold a caller (the VMM's device thread, with
/// the device locked) in the loop: what is left waits for the next call.
const UPDATE_BATCH: usize = 64;

/// What a peer's server connection told it since it last asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A peer joined (or gained a vector).
    Joined(u16),
    /// A peer left: its eventfds are closed.
    Left(u16),
    /// The server closed the connection, or sent what cannot be read (see
    /// [`Change::Refused`] before it): no more joins or leaves.
    ServerGone,
    /// The server sent something the protocol does not allow (`what`, for
    /// the number `value` the message carried): dropped, with any
    /// descriptor it carried.
    Refused { what: &'static str, value: i64 },
}

/// A vector that was rung, and how many rings it took since last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ring {
    pub vector: usize,
    pub count: u64,
}

/// A client of an ivshmem server.
pub struct Peer {
    id: u16,
    memory: File,
    own: Vec<EventFd>,
    peers: BTreeMap<u16, Vec<EventFd>>,
    socket: UnixStream,
    receiver: Receiver,
    server_gone: bool,
}

fn eventfd(file: File) -> EventFd {
    // SAFETY: the descriptor was just received and is owned by `file`,
    // whose ownership passes to the EventFd. (If the server sent something
    // other than an eventfd, writes and reads on it fail or go nowhere.)
    unsafe { EventFd::from_raw_fd(file.into_raw_fd()) }
}

impl Peer {
    /// Connects to the server at `path` and takes its set-up messages.
    pub fn connect(path: &Path) -> Result<Self, Error> {
        let socket = UnixStream::connect(path).map_err(|source| Error::Connect { path: path.to_path_buf(), source })?;
        Self::handshake(socket, None)
    }

    /// Takes the set-up messages from a server connection. With `vectors`
    /// known (as QEMU's `vectors=` option knows it), set-up ends with that
    /// many vectors of its own; without, once the server pauses ([`SETTLE`]).
    pub fn handshake(socket: UnixStream, vectors: Option<usize>) -> Result<Self, Error> {
        let mut receiver = Receiver::default();
        let mut next = |timeout: Duration| -> Result<Option<(i64, Option<File>)>, Error> {
            socket.set_read_timeout(Some(timeout))?;
            match receiver.recv(&socket) {
                Ok(Some(m)) => Ok(Some(m)),
                Ok(None) => Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::Closed),
                Err(e) => Err(e.into()),
            }
        };
        let (version, _) = next(SETUP_TIMEOUT)?.ok_or(Error::Timeout(SETUP_TIMEOUT))?;
        if version != PROTOCOL_VERSION {
            return Err(Error::Version(version));
        }
        let (id, _) = next(SETUP_TIMEOUT)?.ok_or(Error::Timeout(SETUP_TIMEOUT))?;
        let id = u16::try_from(id).map_err(|_| Error::Protocol { what: "a client id out of range", value: id })?;
        let memory = match next(SETUP_TIMEOUT)?.ok_or(Error::Timeout(SETUP_TIMEOUT))? {
            (-1, Some(fd)) => fd,
            (value, _) => return Err(Error::Protocol { what: "no shared memory where it belongs", value }),
        };
        let (mut own, mut peers) = (Vec::new(), BTreeMap::<u16, Vec<EventFd>>::new());
        while vectors.is_none_or(|n| own.len() < n) {
            let wait = if own.is_empty() || vectors.is_some() { SETUP_TIMEOUT } else { SETTLE };
            let Some((value, fd)) = next(wait)? else {
                if own.is_empty() {
                    return Err(Error::Timeout(SETUP_TIMEOUT));
                }
                break;
            };
            let peer = u16::try_from(value).map_err(|_| Error::Protocol { what: "a peer id out of range", value })?;
            // No server gives more vectors: our files stay bounded.
            let fds = match fd {
                Some(_) if peer == id => &mut own,
                Some(_) => peers.entry(peer).or_default(),
                None => {
                    peers.remove(&peer);
                    continue;
                }
            };
            if fds.len() == MAX_VECTORS {
                return Err(Error::Vectors { vectors: MAX_VECTORS + 1 });
            }
            fds.extend(fd.map(eventfd));
        }
        // Every peer has as many vectors as this one (as in `update`).
        peers.values_mut().for_each(|fds| fds.truncate(own.len()));
        socket.set_read_timeout(None)?;
        socket.set_nonblocking(true)?;
        Ok(Self { id, memory, own, peers, socket, receiver, server_gone: false })
    }

    pub fn id(&self) -> u16 {
        self.id
    }

    /// The shared memory the server handed out.
    pub fn memory(&self) -> &File {
        &self.memory
    }

    /// This peer's vectors: rings for it arrive on these.
    pub fn own_eventfds(&self) -> &[EventFd] {
        &self.own
    }

    /// The eventfds that ring `peer`'s vectors (this peer's own too, as a
    /// QEMU device can ring itself).
    pub fn peer_eventfds(&self, peer: u16) -> Option<&[EventFd]> {
        if peer == self.id {
            return Some(&self.own);
        }
        self.peers.get(&peer).map(Vec::as_slice)
    }

    /// Takes the server's messages until `peer` is known with all its
    /// vectors, or `timeout` has passed; returns whether it is. A peer that
    /// another process saw join may not be known here yet: the server
    /// welcomes a new peer before it tells the others.
    pub fn await_peer(&mut self, peer: u16, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.peer_eventfds(peer).is_some_and(|fds| fds.len() == self.own.len()) {
                return true;
            }
            if self.server_gone || Instant::now() >= deadline {
                return false;
            }
            if self.update().is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = poll_readable(&[self.socket.as_raw_fd()], i32::try_from(left.as_millis()).unwrap_or(i32::MAX));
            }
        }
    }

    /// The other peers, by id.
    pub fn peers(&self) -> Vec<u16> {
        self.peers.keys().copied().collect()
    }

    /// The server connection, to poll for [`Peer::update`].
    pub fn socket_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Whether the server closed the connection: no more joins or leaves.
    pub fn server_gone(&self) -> bool {
        self.server_gone
    }

    /// Rings `vector` of `peer` (or of this peer itself).
    pub fn ring(&self, peer: u16, vector: usize) -> Result<(), Error> {
        let fds = self.peer_eventfds(peer).ok_or_else(|| Error::NoPeer { peer, known: self.peers() })?;
        let fd = fds.get(vector).ok_or(Error::NoVector { peer, vector, vectors: fds.len() })?;
        fd.write(1)?;
        Ok(())
    }

    /// Takes the server's messages that have arrived, at most
    /// [`UPDATE_BATCH`] of them: peers joining and leaving. A message that
    /// cannot be read (the connection is then out of step with the server)
    /// ends the connection as if the server had closed it.
    pub fn update(&mut self) -> Vec<Change> {
        let mut changes = Vec::new();
        for _ in 0..UPDATE_BATCH {
            if self.server_gone {
                break;
            }
            match self.receiver.recv(&self.socket) {
                Ok(None) => break,
                Ok(Some((value, fd))) => match (u16::try_from(value), fd) {
                    (Err(_), _) => changes.push(Change::Refused { what: "a peer id out of range", value }),
                    // More vectors of our own after set-up: not used.
                    (Ok(peer), Some(_)) if peer == self.id => {}
                    (Ok(peer), Some(fd)) => {
                        // Every peer has as many vectors as this one: a
                        // server that sends more must not grow our files.
                        let fds = self.peers.entry(peer).or_default();
                        if fds.len() < self.own.len() {
                            fds.push(eventfd(fd));
                            changes.push(Change::Joined(peer));
                        } else {
                            changes.push(Change::Refused { what: "an eventfd past the peer's vectors", value });
                        }
                    }
                    (Ok(peer), None) => {
                        if self.peers.remove(&peer).is_some() {
                            changes.push(Change::Left(peer));
                        }
                    }
                },
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::UnexpectedEof {
                        let value = e.raw_os_error().unwrap_or(0).into();
                        changes.push(Change::Refused { what: "a message that cannot be read (OS error)", value });
                    }
                    self.server_gone = true;
                    changes.push(Change::ServerGone);
                }
            }
        }
        changes.dedup();
        changes
    }

    /// Waits up to `timeout` for rings on this peer's vectors (taking the
    /// server's messages meanwhile); returns the vectors rung, with how many
    /// rings each took. Empty after the timeout.
    pub fn wait(&mut self, timeout: Duration) -> Result<Vec<Ring>, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut fds: Vec<RawFd> = self.own.iter().map(AsRawFd::as_raw_fd).collect();
            if !self.server_gone {
                fds.push(self.socket.as_raw_fd());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let ready = match poll_readable(&fds, i32::try_from(left.as_millis()).unwrap_or(i32::MAX)) {
                Ok(ready) => ready,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            let mut rings = Vec::new();
            for (vector, _) in ready.iter().take(self.own.len()).enumerate().filter(|(_, r)| **r) {
                match self.own[vector].read() {
                    Ok(count) => rings.push(Ring { vector, count }),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if ready.get(self.own.len()).copied().unwrap_or(false) {
                self.update();
            }
            if !rings.is_empty() || left.is_zero() {
                return Ok(rings);
            }
        }
    }
}

/// A host process on either side of the echo mailbox, ringing and rung on
/// [`crate::echo::VECTOR`].
impl crate::echo::Wake for Peer {
    fn id(&self) -> Option<u16> {
        Some(self.id)
    }

    fn wait(&mut self, timeout: Duration) {
        // An error ends the wait like a timeout: the caller looks at the
        // memory again, and gives up on its own deadline.
        let _ = Peer::wait(self, timeout);
    }

    fn ring(&mut self, peer: u16) {
        let _ = Peer::ring(self, peer, crate::echo::VECTOR.into());
    }
}
