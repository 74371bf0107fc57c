//! An ivshmem server, compatible with QEMU's `contrib/ivshmem-server`: it
//! gives every client an id (the lowest free one), the shared memory and
//! eventfds for its vectors, and tells the others when it joins and leaves.
//!
//! Clients never send anything, so the server only writes to them, each
//! write bounded by [`SEND_TIMEOUT`]. A client that misbehaves is dropped,
//! and its leave announced: one that sends data, closes its socket, dies
//! (SIGKILL) or stops reading until its socket buffer is full.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::{info, warn};
use vmm_sys_util::eventfd::EventFd;

use super::wire::{peek, poll_readable, send};
use super::{Error, MAX_PEERS, MAX_VECTORS, PROTOCOL_VERSION};

/// How long a write to a client may wait for room in its socket buffer: a
/// new client takes one message per vector of every other client.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(1);

struct Client {
    socket: UnixStream,
    eventfds: Vec<EventFd>,
}

pub struct Server {
    path: PathBuf,
    listener: UnixListener,
    memory: File,
    vectors: usize,
    clients: BTreeMap<u16, Client>,
}

impl Server {
    /// Listens at `path` (replacing a stale socket that nobody listens on),
    /// to hand out `memory` and `vectors` eventfds per client.
    pub fn bind(path: &Path, memory: File, vectors: usize) -> Result<Self, Error> {
        if !(1..=MAX_VECTORS).contains(&vectors) {
            return Err(Error::Vectors { vectors });
        }
        let listen_error = |source| Error::Listen { path: path.to_path_buf(), source };
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(Error::InUse { path: path.to_path_buf() });
            }
            std::fs::remove_file(path).map_err(listen_error)?;
        }
        let listener = UnixListener::bind(path).map_err(listen_error)?;
        listener.set_nonblocking(true).map_err(listen_error)?;
        Ok(Self { path: path.to_path_buf(), listener, memory, vectors, clients: BTreeMap::new() })
    }

    /// The clients connected now, by id.
    pub fn peers(&self) -> Vec<u16> {
        self.clients.keys().copied().collect()
    }

    /// Waits up to `timeout_ms` (-1: for ever) for a client to connect or
    /// disconnect, and handles what happened. A signal ends the wait early.
    pub fn step(&mut self, timeout_ms: i32) -> Result<(), Error> {
        let ids: Vec<u16> = self.peers();
        let mut fds: Vec<RawFd> = vec![self.listener.as_raw_fd()];
        fds.extend(ids.iter().map(|id| self.clients[id].socket.as_raw_fd()));
        let ready = match poll_readable(&fds, timeout_ms) {
            Ok(ready) => ready,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        // A client never sends: a readable socket is closed, or misbehaves.
        for (&id, _) in ids.iter().zip(&ready[1..]).filter(|(_, r)| **r) {
            // Gone already if it could not take the news of an earlier one
            // leaving (as when two peers close at once).
            let Some(client) = self.clients.get(&id) else { continue };
            let why = match peek(&client.socket) {
                Ok(0) => "closed its connection",
                Ok(_) => "sent data (clients must not)",
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => "broke its connection",
            };
            self.drop_client(id, why);
        }
        if ready[0] {
            self.accept_all();
        }
        Ok(())
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((socket, _)) => self.join(socket),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors, say: the connection waits in the backlog.
                    warn!("ivshmem server {}: accept: {e}", self.path.display());
                    return;
                }
            }
        }
    }

    fn join(&mut self, socket: UnixStream) {
        if self.clients.len() >= MAX_PEERS {
            warn!("ivshmem server: {MAX_PEERS} peers already; refused a new one");
            return;
        }
        let Some(id) = (0..=u16::MAX).find(|id| !self.clients.contains_key(id)) else { return };
        let eventfds = match (0..self.vectors)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))
            .collect::<io::Result<Vec<_>>>()
        {
            Ok(e) => e,
            Err(e) => {
                warn!("ivshmem server: eventfds for a new peer: {e}");
                return;
            }
        };
        if let Err(e) = socket.set_write_timeout(Some(SEND_TIMEOUT)).and_then(|()| self.welcome(&socket, id, &eventfds))
        {
            warn!("ivshmem server: set-up of peer {id} failed ({e}); dropped it");
            return;
        }
        let fds: Vec<RawFd> = eventfds.iter().map(AsRawFd::as_raw_fd).collect();
        let others: Vec<u16> = self.peers();
        self.clients.insert(id, Client { socket, eventfds });
        info!("ivshmem server: peer {id} joined ({} peers)", self.clients.len());
        for other in others {
            // Dropping a peer that cannot take the news drops, in turn, the
            // peers that cannot take that: the new one (whose eventfds
            // are then closed) or one still to be told.
            if !self.clients.contains_key(&id) {
                break;
            }
            let Some(peer) = self.clients.get(&other) else { continue };
            let sent = fds.iter().try_for_each(|&fd| send(&peer.socket, id.into(), Some(fd)));
            if let Err(e) = sent {
                self.drop_client(other, &format!("did not take the news of peer {id} ({e})"));
            }
        }
    }

    /// Set-up messages 1 to 5 for a new client.
    fn welcome(&self, socket: &UnixStream, id: u16, eventfds: &[EventFd]) -> io::Result<()> {
        send(socket, PROTOCOL_VERSION, None)?;
        send(socket, id.into(), None)?;
        send(socket, -1, Some(self.memory.as_raw_fd()))?;
        for (&other, client) in &self.clients {
            for fd in &client.eventfds {
                send(socket, other.into(), Some(fd.as_raw_fd()))?;
            }
        }
        eventfds.iter().try_for_each(|fd| send(socket, id.into(), Some(fd.as_raw_fd())))
    }

    /// Drops client `id` and tells the others; one that cannot be told is
    /// dropped in turn.
    fn drop_client(&mut self, id: u16, why: &str) {
        let mut gone = vec![(id, why.to_string())];
        while let Some((id, why)) = gone.pop() {
            if self.clients.remove(&id).is_none() {
                continue;
            }
            info!("ivshmem server: peer {id} left: {why} ({} peers)", self.clients.len());
            for (&other, client) in &self.clients {
                if let Err(e) = send(&client.socket, id.into(), None) {
                    gone.push((other, format!("did not take the news of peer {id}'s leaving ({e})")));
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
