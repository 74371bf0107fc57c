//! The layout of a kvmshm shared-memory region and the protocols run over it.
//!
//! Guest programs and host tools both build on this crate so that the two
//! sides cannot disagree about an offset. The core is `no_std` and has no
//! dependencies, so it costs a guest program only the code it calls; the
//! `host` feature adds the host library (mapping backing files, inspection,
//! the echo client).
//!
//! A region starts with a [`header`] naming the protocol (the [`Mode`]) that
//! the rest of it currently holds:
//! - [`records`]: guest processes write checksummed records, each into its own area;
//! - [`fill`]: the host fills the data area with a seeded pseudo-random stream;
//! - [`echo`]: a request/response mailbox for live round trips;
//! - [`stream`]: bulk data both ways and ping-pong, for the benchmarks;
//! - [`pingpong`]: two peers taking turns with doorbell rings (no header);
//! - [`ends`]: the first and last pages of a region too large to map whole (no header);
//! - [`clock`]: the host's real-time clock, for a guest to compare its own with.
//!
//! Beside them, [`spin`] measures what a process spinning in user space
//! loses to interruptions, and [`tlb`] what large pages are worth, the same
//! way in the guest and on the host.

#![cfg_attr(not(any(feature = "host", test)), no_std)]

pub mod clock;
pub mod echo;
pub mod ends;
mod error;
pub mod fill;
mod hash;
pub mod header;
pub mod pingpong;
mod prng;
pub mod records;
mod region;
pub mod spin;
pub mod stream;
pub mod tlb;

#[cfg(feature = "host")]
pub mod host;

pub use error::LayoutError;
pub use hash::Checksum;
pub use header::{HEADER_LEN, Header, Mode};
pub use prng::SplitMix64;
pub use region::Region;
