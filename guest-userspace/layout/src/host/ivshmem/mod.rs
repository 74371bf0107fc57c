//! QEMU's ivshmem client-server protocol, version 0 (QEMU's
//! `docs/specs/ivshmem-spec.rst`): a server hands out one shared-memory file
//! and, to every client, an id and eventfds with which the clients ring
//! each other. QEMU's ivshmem-doorbell device, our VMM's and host processes
//! ([`Peer`]) are clients; [`Server`] is the server.
//!
//! The connection is one-way, server to client. Each message is one 8-byte
//! little-endian signed number, sent with at most one file descriptor:
//!
//! | step | number | file descriptor |
//! |---|---|---|
//! | 1 | the protocol version, 0 | none |
//! | 2 | the client's id (0 to 65535) | none |
//! | 3 | -1 | the shared memory |
//! | 4 | each other client's id, once per vector | its eventfd for that vector |
//! | 5 | the client's own id, once per vector | its own eventfd for that vector |
//! | later | a client's id | one per vector: it joined (as in 4); none: it left |
//!
//! Vectors are numbered in the order their messages come. To ring vector
//! `v` of client `p`, a client writes 1 (8 bytes, native order) to `p`'s
//! eventfd `v`; the owner of an eventfd reads it to take the rings.

mod peer;
mod server;
mod wire;

pub use peer::{Change, Peer, Ring};
pub use server::Server;
pub use wire::{poll_readable, send as send_message};

use std::io;
use std::path::PathBuf;

/// The protocol version this module speaks.
pub const PROTOCOL_VERSION: i64 = 0;
/// Vectors a server hands out per client, at most.
pub const MAX_VECTORS: usize = 64;
/// Clients a server takes at once, at most.
pub const MAX_PEERS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: cannot connect to the ivshmem server", path.display())]
    Connect { path: PathBuf, source: io::Error },
    #[error("{}: cannot listen", path.display())]
    Listen { path: PathBuf, source: io::Error },
    #[error("{}: another server is listening there", path.display())]
    InUse { path: PathBuf },
    #[error("the server speaks protocol version {0}; this client speaks {PROTOCOL_VERSION}")]
    Version(i64),
    #[error("the server closed the connection during set-up")]
    Closed,
    #[error("no message from the server within {0:?} during set-up")]
    Timeout(std::time::Duration),
    #[error("the server sent {what}: {value}")]
    Protocol { what: &'static str, value: i64 },
    #[error("the server gave no interrupt vectors")]
    NoVectors,
    #[error("no peer {peer} (peers now: {known:?})")]
    NoPeer { peer: u16, known: Vec<u16> },
    #[error("peer {peer} has {vectors} vectors, not vector {vector}")]
    NoVector { peer: u16, vector: usize, vectors: usize },
    #[error("{vectors} vectors: a server gives 1 to {MAX_VECTORS}")]
    Vectors { vectors: usize },
    #[error("I/O on the server connection or an eventfd")]
    Io(#[from] io::Error),
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::host::temp_file;

    const WAIT: Duration = Duration::from_secs(5);

    /// A server on its own thread, stopped when dropped.
    struct Running {
        path: PathBuf,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Running {
        fn start(name: &str, vectors: usize) -> Self {
            let memory = std::fs::File::open(temp_file(name, 1 << 16)).unwrap();
            let path = std::env::temp_dir().join(format!("ivshmem-test-{name}-{}.sock", std::process::id()));
            let mut server = Server::bind(&path, memory, vectors).unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let thread = std::thread::spawn(move || {
                while !flag.load(Ordering::SeqCst) {
                    server.step(20).unwrap();
                }
            });
            Self { path, stop, thread: Some(thread) }
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            let _ = self.thread.take().map(std::thread::JoinHandle::join);
        }
    }

    /// Takes `peer`'s server messages until `want` comes; returns them all.
    fn await_change(peer: &mut Peer, want: Change) -> Vec<Change> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        while !seen.contains(&want) {
            assert!(Instant::now() < deadline, "no {want:?} in {seen:?}; peers {:?}", peer.peers());
            seen.extend(peer.update());
            std::thread::sleep(Duration::from_millis(5));
        }
        seen
    }

    #[test]
    fn peers_get_ids_memory_and_each_others_vectors_and_ring_each_other() {
        let server = Running::start("ring", 3);
        let mut a = Peer::connect(&server.path).unwrap();
        let mut b = Peer::connect(&server.path).unwrap();
        assert_eq!((a.id(), b.id()), (0, 1));
        assert_eq!(b.peers(), vec![0], "set-up lists the peers already there");
        assert_eq!((a.own_eventfds().len(), b.peer_eventfds(0).unwrap().len()), (3, 3));
        await_change(&mut a, Change::Joined(1));
        let (ma, mb) = (a.memory().metadata().unwrap(), b.memory().metadata().unwrap());
        assert_eq!((ma.dev(), ma.ino()), (mb.dev(), mb.ino()), "one shared file");

        a.ring(1, 2).unwrap();
        a.ring(1, 2).unwrap();
        assert_eq!(b.wait(WAIT).unwrap(), vec![Ring { vector: 2, count: 2 }]);
        b.ring(0, 0).unwrap();
        assert_eq!(a.wait(WAIT).unwrap(), vec![Ring { vector: 0, count: 1 }]);
        assert!(b.wait(Duration::from_millis(50)).unwrap().is_empty(), "nothing more");
        assert!(matches!(a.ring(1, 3), Err(Error::NoVector { vector: 3, vectors: 3, .. })));
        assert!(matches!(a.ring(7, 0), Err(Error::NoPeer { peer: 7, .. })));

        drop(b);
        await_change(&mut a, Change::Left(1));
        assert!(a.peers().is_empty());
        // The id is free again.
        assert_eq!(Peer::connect(&server.path).unwrap().id(), 1);
    }

    #[test]
    fn a_server_that_breaks_the_protocol_cannot_grow_a_peers_files() {
        let (server, client) = UnixStream::pair().unwrap();
        let memory = std::fs::File::open(temp_file("hostile-server", 1 << 16)).unwrap();
        let eventfd = || vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let own = [eventfd(), eventfd()];
        set_up(&server, &memory, &own);
        let mut peer = Peer::handshake(client, Some(2)).unwrap();
        // Peer 5 with 64 vectors, and an id no peer can have.
        let theirs = eventfd();
        for _ in 0..64 {
            send_message(&server, 5, Some(theirs.as_raw_fd())).unwrap();
        }
        send_message(&server, 70_000, None).unwrap();
        // 65 messages: more than one call takes.
        let mut changes = peer.update();
        changes.extend(peer.update());
        assert_eq!(
            changes,
            vec![
                Change::Joined(5),
                Change::Refused { what: "an eventfd past the peer's vectors", value: 5 },
                Change::Refused { what: "a peer id out of range", value: 70_000 },
            ]
        );
        assert_eq!(peer.peer_eventfds(5).unwrap().len(), 2, "as many as its own vectors");
        // It goes on: a leave after the refusals still counts.
        send_message(&server, 5, None).unwrap();
        assert_eq!(peer.update(), vec![Change::Left(5)]);
    }

    /// A server's first set-up messages: version, id 3, the memory.
    fn greet(server: &UnixStream, memory: &std::fs::File) {
        send_message(server, PROTOCOL_VERSION, None).unwrap();
        send_message(server, 3, None).unwrap();
        send_message(server, -1, Some(memory.as_raw_fd())).unwrap();
    }

    /// The set-up messages of a server that gives client 3 `own` vectors.
    fn set_up(server: &UnixStream, memory: &std::fs::File, own: &[vmm_sys_util::eventfd::EventFd]) {
        greet(server, memory);
        own.iter().for_each(|fd| send_message(server, 3, Some(fd.as_raw_fd())).unwrap());
    }

    #[test]
    fn set_up_takes_at_most_max_vectors_for_anyone() {
        let memory = std::fs::File::open(temp_file("hostile-setup", 1 << 16)).unwrap();
        let eventfd = || vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let theirs = eventfd();
        // Too many of its own.
        let (server, client) = UnixStream::pair().unwrap();
        let own: Vec<_> = (0..=MAX_VECTORS).map(|_| eventfd()).collect();
        set_up(&server, &memory, &own);
        assert!(matches!(Peer::handshake(client, None), Err(Error::Vectors { vectors: 65 })));
        // Too many of another peer's.
        let (server, client) = UnixStream::pair().unwrap();
        greet(&server, &memory);
        (0..=MAX_VECTORS).for_each(|_| send_message(&server, 5, Some(theirs.as_raw_fd())).unwrap());
        assert!(matches!(Peer::handshake(client, Some(1)), Err(Error::Vectors { vectors: 65 })));
        // More of another peer's than of its own: cut to its own count.
        let (server, client) = UnixStream::pair().unwrap();
        greet(&server, &memory);
        (0..4).for_each(|_| send_message(&server, 5, Some(theirs.as_raw_fd())).unwrap());
        let own = [eventfd(), eventfd()];
        own.iter().for_each(|fd| send_message(&server, 3, Some(fd.as_raw_fd())).unwrap());
        let peer = Peer::handshake(client, Some(2)).unwrap();
        assert_eq!(peer.peer_eventfds(5).unwrap().len(), 2);
    }

    #[test]
    fn a_flooding_server_is_taken_in_bounded_steps() {
        let (server, client) = UnixStream::pair().unwrap();
        let memory = std::fs::File::open(temp_file("flooding-server", 1 << 16)).unwrap();
        let own = [vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap()];
        set_up(&server, &memory, &own);
        let mut peer = Peer::handshake(client, Some(1)).unwrap();
        // A hundred leaves of peers nobody knows (the socket holds a few
        // hundred unread), then a join: one call takes a batch, not all.
        (0..100).for_each(|i| send_message(&server, 100 + i, None).unwrap());
        send_message(&server, 9, Some(own[0].as_raw_fd())).unwrap();
        assert!(peer.update().is_empty(), "the join is past the first batch");
        assert_eq!(peer.update(), vec![Change::Joined(9)]);
        drop(server);
        assert_eq!(peer.update(), vec![Change::ServerGone]);
        assert!(peer.update().is_empty(), "nothing more is read");
    }

    #[test]
    fn two_clients_that_close_at_once_are_both_dropped() {
        // Telling the second that the first left fails, which drops the
        // second before the server looks at its socket.
        let memory = std::fs::File::open(temp_file("close-at-once", 1 << 16)).unwrap();
        let path = std::env::temp_dir().join(format!("ivshmem-test-close-at-once-{}.sock", std::process::id()));
        let mut server = Server::bind(&path, memory, 1).unwrap();
        let first = UnixStream::connect(&path).unwrap();
        server.step(1000).unwrap();
        let second = UnixStream::connect(&path).unwrap();
        server.step(1000).unwrap();
        assert_eq!(server.peers(), vec![0, 1]);
        drop((first, second));
        server.step(1000).unwrap();
        assert_eq!(server.peers(), Vec::<u16>::new());
    }

    #[test]
    fn misbehaving_clients_are_dropped_and_announced() {
        let server = Running::start("misbehave", 4);
        let mut good = Peer::connect(&server.path).unwrap();
        // Sends data, which clients must not.
        let mut chatty = UnixStream::connect(&server.path).unwrap();
        std::io::Write::write_all(&mut chatty, b"hello").unwrap();
        let seen = await_change(&mut good, Change::Left(1));
        assert_eq!(seen, vec![Change::Joined(1), Change::Left(1)]);

        // Never reads: every join and leave adds messages to its socket
        // until the buffer is full, and then it is dropped.
        let silent = UnixStream::connect(&server.path).unwrap();
        await_change(&mut good, Change::Joined(1));
        let start = Instant::now();
        while !good.update().contains(&Change::Left(1)) {
            drop(Peer::connect(&server.path).unwrap());
            assert!(start.elapsed() < Duration::from_secs(60), "the silent client was never dropped");
        }
        assert!(silent.as_raw_fd() >= 0, "it was connected all along");
        // The server still works.
        let late = Peer::connect(&server.path).unwrap();
        late.ring(good.id(), 0).unwrap();
        assert_eq!(good.wait(WAIT).unwrap(), vec![Ring { vector: 0, count: 1 }]);
    }

    #[test]
    fn echo_round_trips_go_by_rings_both_ways() {
        use crate::echo::Mailbox;
        use crate::host::{EchoClient, MappedFile};

        let server = Running::start("echo", 1);
        let mut serving = Peer::connect(&server.path).unwrap();
        let mut client = Peer::connect(&server.path).unwrap();
        let file = MappedFile::open(&temp_file("echo-rings", 3 * 4096 + 4096)).unwrap();
        let region = file.region();
        let mailbox = Mailbox::format(region).unwrap();
        std::thread::scope(|s| {
            let echo = s.spawn(move || mailbox.serve_with(&mut serving));
            let mut echo_client = EchoClient::connect_with(region, WAIT, WAIT, Some(&mut client)).unwrap();
            assert!(echo_client.uses_interrupts());
            assert_eq!(echo_client.send(200).unwrap().requests, 200);
            echo_client.stop().unwrap();
            assert_eq!(echo.join().unwrap(), Ok(200));
        });
    }

    #[test]
    fn a_second_server_on_the_same_socket_is_refused() {
        let server = Running::start("twice", 1);
        let memory = std::fs::File::open(temp_file("twice-2", 4096)).unwrap();
        assert!(matches!(Server::bind(&server.path, memory, 1), Err(Error::InUse { .. })));
        let memory = std::fs::File::open(temp_file("twice-3", 4096)).unwrap();
        let path = std::env::temp_dir().join("ivshmem-test-vectors.sock");
        assert!(matches!(Server::bind(&path, memory, 0), Err(Error::Vectors { vectors: 0 })));
    }
}
