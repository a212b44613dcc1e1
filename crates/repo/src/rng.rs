//! Randomness as a parameter: a cloneable, thread-safe handle on any cryptographic RNG.
//!
//! Library code never reaches for a global RNG; callers pass [`SharedRng::os()`] in production
//! and a seeded generator in tests that need reproducible keys and ids.

use std::sync::{Arc, Mutex};

use rand_core::{CryptoRng, CryptoRngCore, RngCore};

/// A cloneable handle on one cryptographic RNG shared by the engine's threads.
#[derive(Clone)]
pub struct SharedRng(Arc<Mutex<Box<dyn CryptoRngCore + Send>>>);

impl SharedRng {
    /// The operating system's RNG.
    pub fn os() -> SharedRng {
        SharedRng::new(rand_core::OsRng)
    }

    /// Wraps any cryptographic RNG (a seeded one in tests).
    pub fn new(rng: impl CryptoRngCore + Send + 'static) -> SharedRng {
        SharedRng(Arc::new(Mutex::new(Box::new(rng))))
    }

    fn with<T>(&self, f: impl FnOnce(&mut dyn CryptoRngCore) -> T) -> T {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(g.as_mut())
    }
}

impl RngCore for SharedRng {
    fn next_u32(&mut self) -> u32 {
        self.with(|r| r.next_u32())
    }
    fn next_u64(&mut self) -> u64 {
        self.with(|r| r.next_u64())
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.with(|r| r.fill_bytes(dest))
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.with(|r| r.try_fill_bytes(dest))
    }
}

impl CryptoRng for SharedRng {}
