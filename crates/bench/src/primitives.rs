//! Per-core throughput of the building blocks, to justify the choices in docs/format.md.

use std::time::Instant;

use serde::Serialize;

#[derive(Serialize)]
pub(crate) struct Figure {
    pub(crate) name: String,
    pub(crate) mb_per_s: f64,
    pub(crate) ratio: Option<f64>,
}

fn sample() -> Vec<u8> {
    // Text-like, moderately compressible data: real files from this machine if readable.
    let mut v = Vec::new();
    for p in ["/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0"] {
        v.extend(std::fs::read(p).unwrap_or_default());
    }
    let mut x: u64 = 0x9e3779b97f4a7c15;
    while v.len() < 8 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes()[..(x % 8) as usize]);
        v.extend_from_slice(b" the quick brown fox ");
    }
    v.truncate(8 << 20);
    v
}

fn time(name: &str, bytes: usize, f: &mut dyn FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut rounds = 0;
    while start.elapsed().as_secs_f64() < 0.5 {
        f();
        rounds += 1;
    }
    let mbs = (bytes * rounds) as f64 / start.elapsed().as_secs_f64() / 1e6;
    println!("{name:28} {mbs:9.0} MB/s");
    mbs
}

pub(crate) fn run() -> Vec<Figure> {
    use aes_gcm::aead::{AeadInPlace, KeyInit};
    let data = sample();
    let mut out = Vec::new();
    let key = [7u8; 32];
    out.push(Figure {
        name: "blake3 keyed".into(),
        mb_per_s: time("blake3 keyed", data.len(), &mut || {
            std::hint::black_box(blake3::keyed_hash(&key, &data));
        }),
        ratio: None,
    });
    for level in [1, 3, 6] {
        let z = zstd::bulk::compress(&data, level).unwrap_or_default();
        let name = format!("zstd level {level} compress");
        let mbs = time(&name, data.len(), &mut || {
            std::hint::black_box(zstd::bulk::compress(&data, level).ok());
        });
        out.push(Figure { name, mb_per_s: mbs, ratio: Some(z.len() as f64 / data.len() as f64) });
    }
    let z = zstd::bulk::compress(&data, 3).unwrap_or_default();
    out.push(Figure {
        name: "zstd decompress".into(),
        mb_per_s: time("zstd decompress", data.len(), &mut || {
            std::hint::black_box(zstd::bulk::decompress(&z, data.len()).ok());
        }),
        ratio: None,
    });
    let aes = aes_gcm::Aes256Gcm::new((&key).into());
    let mut buf = data.clone();
    out.push(Figure {
        name: "aes-256-gcm seal".into(),
        mb_per_s: time("aes-256-gcm seal", data.len(), &mut || {
            std::hint::black_box(aes.encrypt_in_place_detached((&[0u8; 12]).into(), b"", &mut buf).ok());
        }),
        ratio: None,
    });
    let xc = chacha20poly1305::XChaCha20Poly1305::new((&key).into());
    out.push(Figure {
        name: "xchacha20-poly1305 seal".into(),
        mb_per_s: time("xchacha20-poly1305 seal", data.len(), &mut || {
            std::hint::black_box(xc.encrypt_in_place_detached((&[0u8; 24]).into(), b"", &mut buf).ok());
        }),
        ratio: None,
    });
    out
}
