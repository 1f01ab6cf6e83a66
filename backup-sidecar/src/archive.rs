//! The archive: a tar of the snapshot (exactly as `etcdctl snapshot save` writes it) and a JSON
//! manifest, compressed as a series of independent gzip members or zstd frames (the [`Codec`]) so
//! that two cores compress two chunks at once. Standard tools read concatenated members or frames
//! as one stream (`tar xzf`, `tar --zstd -xf`).
//!
//! Everything is streamed: the snapshot's size is known from etcd's first message, so its tar header
//! is written first and the bytes follow; memory is bounded by the chunks in flight.

use std::{
    collections::VecDeque,
    io::{self, Write},
    thread::JoinHandle,
};

use flate2::{Compress, Compression, FlushCompress, Status};
pub use ouroboros_crds::sidecar::{Codec, Manifest};

/// Name of the snapshot inside the archive.
pub const SNAPSHOT_ENTRY: &str = "snapshot.db";
/// Name of the manifest inside the archive.
pub const MANIFEST_ENTRY: &str = "manifest.json";
/// Version of the manifest format.
pub const FORMAT_VERSION: u32 = 1;
/// Uncompressed bytes per gzip member or zstd frame.
pub const CHUNK: usize = 1 << 20;

/// Compresses written bytes in [`CHUNK`]s on a pool of `workers` threads, writing the gzip members
/// or zstd frames to `inner` in order. At most `workers + 1` chunks are in flight, and their buffers are reused, so
/// memory stays at a few MiB whatever the database size.
pub struct ParallelCompressor<W: Write> {
    inner: W,
    buf: Vec<u8>,
    workers: Vec<Worker>,
    /// Workers holding a chunk, oldest first.
    in_flight: VecDeque<usize>,
    next: usize,
    /// Buffer pairs (input, output) not in use.
    spare: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Worker {
    to: std::sync::mpsc::SyncSender<(Vec<u8>, Vec<u8>)>,
    from: std::sync::mpsc::Receiver<io::Result<(Vec<u8>, Vec<u8>)>>,
    thread: Option<JoinHandle<()>>,
}

impl<W: Write> std::fmt::Debug for ParallelCompressor<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParallelCompressor")
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

/// Bytes classified at a time as random or not. A snapshot interleaves values page by page (4 KiB),
/// so a 1 MiB chunk is rarely all one kind: deciding per segment stores the random values and
/// compresses the text around them. Each run of segments of one kind becomes its own gzip member
/// (18 bytes of header and trailer per run; deflate's window is 32 KiB, so little is lost).
const SEGMENT: usize = 16 << 10;

/// Order-0 entropy (bits per byte) above which a segment is taken for random or already compressed
/// bytes (encrypted Secrets, images): 16 KiB of uniform random bytes measure about 7.99, JSON and
/// protobuf text 4 to 6. Deflating such bytes costs more CPU than text (every byte a literal) and
/// saves nothing, so they are stored. Bytes with high entropy that still repeat would compress and
/// are stored anyway: a few bytes of ratio, never data.
const RANDOM_BITS_PER_BYTE: f64 = 7.5;

/// Bytes of each segment whose histogram is taken: a page is enough to tell random bytes from
/// text, and a quarter of the segment costs a quarter of the time (a full pass was about 1 s per
/// GiB here, as much as the copy of the stored bytes).
const SAMPLE: usize = 4 << 10;

/// Whether `segment` looks random, by the entropy of its first [`SAMPLE`] bytes' histogram: far
/// cheaper than the deflate probe it replaces. A sample of 4 KiB of uniform random bytes measures
/// about 7.95 bits per byte.
fn looks_random(segment: &[u8]) -> bool {
    let sample = &segment[..segment.len().min(SAMPLE)];
    if sample.is_empty() {
        return false;
    }
    let mut counts = [0u32; 256];
    for &b in sample {
        counts[usize::from(b)] += 1;
    }
    let n = sample.len() as f64;
    let bits: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    bits > RANDOM_BITS_PER_BYTE
}

/// `input` cut into runs of whole [`SEGMENT`]s of one kind: (bytes, random).
fn runs(input: &[u8]) -> Vec<(&[u8], bool)> {
    let mut out: Vec<(std::ops::Range<usize>, bool)> = Vec::new();
    for (i, segment) in input.chunks(SEGMENT).enumerate() {
        let start = i * SEGMENT;
        let random = looks_random(segment);
        match out.last_mut() {
            Some((range, kind)) if *kind == random => range.end = start + segment.len(),
            _ => out.push((start..start + segment.len(), random)),
        }
    }
    out.into_iter().map(|(r, random)| (&input[r], random)).collect()
}

/// A worker's compressor: the codec and its level, and for zstd a context kept from chunk to chunk
/// (making one allocates its tables).
enum Encoder {
    Gzip(Gzip),
    Zstd(zstd::bulk::Compressor<'static>),
}

impl Encoder {
    fn new(codec: Codec, level: u32) -> io::Result<Encoder> {
        Ok(match codec {
            Codec::Gzip => Encoder::Gzip(Gzip::new(level)),
            // zstd's level 0 means its default (3); here 0 is the fastest, as with gzip.
            Codec::Zstd => {
                let mut z = zstd::bulk::Compressor::new(level.clamp(1, 9) as i32)?;
                // Each frame checks itself, as each gzip member's CRC does: damage is found on
                // reading, not only by the snapshot's own hash.
                z.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
                Encoder::Zstd(z)
            }
        })
    }

    fn compress(&mut self, input: &[u8], output: Vec<u8>) -> io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(g) => g.compress(input, output),
            Encoder::Zstd(z) => {
                let mut output = output;
                output.clear();
                // zstd stores a block that does not compress by itself, at little cost: no probe.
                output.reserve(zstd::zstd_safe::compress_bound(input.len()));
                z.compress_to_buffer(input, &mut output)?;
                Ok(output)
            }
        }
    }
}

/// A worker's gzip compressor: its level, and one deflate state reused from member to member.
/// Making a state allocates and zeroes a few hundred KiB; with a member per run of text (several
/// per chunk) that was a tenth of the sidecar's CPU in page faults and memset (perf, 1 GiB).
struct Gzip {
    level: Compression,
    deflate: Compress,
}

/// A gzip member's header: magic, deflate, no flags, no time, no extra flags, OS unknown.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

impl Gzip {
    fn new(level: u32) -> Gzip {
        let level = Compression::new(level.min(9));
        Gzip {
            level,
            deflate: Compress::new(level, false),
        }
    }

    /// Compresses `input` into `output` (cleared first) as gzip members, one per run of segments
    /// of one kind: random runs are stored, the others deflated (level 0 stores everything).
    fn compress(&mut self, input: &[u8], output: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut output = output;
        output.clear();
        for (run, random) in runs(input) {
            if random || self.level == Compression::none() {
                stored_member(run, &mut output);
            } else {
                self.deflated_member(run, &mut output)?;
            }
        }
        Ok(output)
    }

    /// Appends `input` to `out` as one gzip member of deflated blocks.
    fn deflated_member(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        out.extend_from_slice(&GZIP_HEADER);
        self.deflate.reset();
        loop {
            // Text deflates to less than it is; a run that does not gets more room on the next turn.
            out.reserve(input.len() / 2 + 1024);
            let consumed = usize::try_from(self.deflate.total_in()).unwrap_or(usize::MAX);
            let rest = input.get(consumed..).unwrap_or_default();
            match self
                .deflate
                .compress_vec(rest, out, FlushCompress::Finish)
                .map_err(io::Error::other)?
            {
                Status::StreamEnd => break,
                Status::Ok | Status::BufError => {}
            }
        }
        gzip_trailer(input, out);
        Ok(())
    }
}

/// A gzip member's trailer: the CRC-32 of its uncompressed bytes and their length modulo 2^32.
fn gzip_trailer(input: &[u8], out: &mut Vec<u8>) {
    // crc32fast picks the CPU's carry-less multiply at run time; zlib-rs's own CRC, which
    // GzEncoder used, ran its portable version here (6% of the sidecar's CPU).
    out.extend_from_slice(&crc32fast::hash(input).to_le_bytes());
    out.extend_from_slice(&(input.len() as u32).to_le_bytes());
}

/// Appends `input` to `out` as one gzip member (RFC 1952) of stored deflate blocks (RFC 1951
/// 3.2.4), at the cost of a copy and a CRC. A `GzEncoder` at level 0 passes every byte through
/// deflate's buffers, measured here at 0.6 GB/s, which made storing random bytes cost half as much
/// CPU as compressing text.
fn stored_member(input: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&GZIP_HEADER);
    out.reserve(input.len() + input.len() / 0xffff * 5 + 13);
    let mut blocks = input.chunks(0xffff).peekable();
    if blocks.peek().is_none() {
        // An empty final block.
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        // BFINAL on the last block, BTYPE 00 (stored), then LEN and its complement.
        out.push(u8::from(blocks.peek().is_none()));
        let len = u16::try_from(block.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    gzip_trailer(input, out);
}

fn spawn_worker(mut encoder: Encoder) -> Worker {
    let (to, jobs) = std::sync::mpsc::sync_channel::<(Vec<u8>, Vec<u8>)>(1);
    let (done, from) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::spawn(move || {
        while let Ok((input, output)) = jobs.recv() {
            let result = encoder.compress(&input, output).map(|out| (input, out));
            if done.send(result).is_err() {
                return;
            }
        }
    });
    Worker {
        to,
        from,
        thread: Some(thread),
    }
}

fn pair() -> (Vec<u8>, Vec<u8>) {
    // Room for incompressible input (stored blocks add a few bytes per 64 KiB), so the output never
    // reallocates.
    (
        Vec::with_capacity(CHUNK),
        Vec::with_capacity(CHUNK + CHUNK / 64 + 1024),
    )
}

impl<W: Write> ParallelCompressor<W> {
    /// A writer compressing with `codec` at `level` (0 to 9; gzip's 0 stores) on `workers` threads.
    pub fn new(inner: W, codec: Codec, level: u32, workers: usize) -> io::Result<Self> {
        let workers = (0..workers.max(1))
            .map(|_| Encoder::new(codec, level).map(spawn_worker))
            .collect::<io::Result<_>>()?;
        Ok(Self {
            inner,
            buf: Vec::with_capacity(CHUNK),
            workers,
            in_flight: VecDeque::new(),
            next: 0,
            spare: Vec::new(),
        })
    }

    fn drain_one(&mut self) -> io::Result<()> {
        if let Some(w) = self.in_flight.pop_front() {
            let (input, output) = self.workers[w]
                .from
                .recv()
                .map_err(|_| io::Error::other("a compression thread stopped"))??;
            self.inner.write_all(&output)?;
            self.spare.push((input, output));
        }
        Ok(())
    }

    fn submit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        // One chunk queued beyond the running ones keeps every worker busy; more only costs memory.
        while self.in_flight.len() > self.workers.len() {
            self.drain_one()?;
        }
        let (fresh, output) = self.spare.pop().unwrap_or_else(pair);
        let mut input = std::mem::replace(&mut self.buf, fresh);
        self.buf.clear();
        let w = self.next;
        self.next = (self.next + 1) % self.workers.len();
        // A worker's queue holds one chunk; waiting for its previous result first keeps order.
        while self.in_flight.contains(&w) {
            self.drain_one()?;
        }
        if self.workers[w]
            .to
            .send((std::mem::take(&mut input), output))
            .is_err()
        {
            return Err(io::Error::other("a compression thread stopped"));
        }
        self.in_flight.push_back(w);
        Ok(())
    }

    /// Compresses what is left, writes every member, and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.submit()?;
        while !self.in_flight.is_empty() {
            self.drain_one()?;
        }
        self.inner.flush()?;
        let workers = std::mem::take(&mut self.workers);
        for mut w in workers {
            drop(w.to);
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
        Ok(self.inner)
    }
}

impl<W: Write> Write for ParallelCompressor<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let take = (CHUNK - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..take]);
        if self.buf.len() == CHUNK {
            self.submit()?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Members are only complete when `finish` runs; flushing early would cut a chunk short.
        Ok(())
    }
}

/// Writes the tar stream: the snapshot entry's header first (its size is known up front), then its
/// bytes as they arrive, then the manifest and the end-of-archive blocks.
#[derive(Debug)]
pub struct TarStream<W: Write> {
    out: W,
    expected: u64,
    written: u64,
}

fn header(path: &str, size: u64, mtime: u64) -> io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_size(size);
    h.set_mode(0o600);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

impl<W: Write> TarStream<W> {
    /// Starts the archive with the header of a `snapshot_size`-byte snapshot entry.
    pub fn start(mut out: W, snapshot_size: u64, mtime: u64) -> io::Result<Self> {
        out.write_all(header(SNAPSHOT_ENTRY, snapshot_size, mtime)?.as_bytes())?;
        Ok(Self {
            out,
            expected: snapshot_size,
            written: 0,
        })
    }

    /// Appends snapshot bytes; more than announced is an error.
    pub fn snapshot_bytes(&mut self, data: &[u8]) -> io::Result<()> {
        self.written += data.len() as u64;
        if self.written > self.expected {
            return Err(io::Error::other(format!(
                "etcd sent more snapshot bytes than it announced ({} > {})",
                self.written, self.expected
            )));
        }
        self.out.write_all(data)
    }

    /// Pads the snapshot, appends the manifest, ends the archive and returns the writer.
    pub fn finish(mut self, manifest: &[u8], mtime: u64) -> io::Result<W> {
        if self.written != self.expected {
            return Err(io::Error::other(format!(
                "snapshot ended after {} of {} announced bytes",
                self.written, self.expected
            )));
        }
        pad(&mut self.out, self.written)?;
        self.out
            .write_all(header(MANIFEST_ENTRY, manifest.len() as u64, mtime)?.as_bytes())?;
        self.out.write_all(manifest)?;
        pad(&mut self.out, manifest.len() as u64)?;
        self.out.write_all(&[0u8; 1024])?;
        Ok(self.out)
    }
}

fn pad<W: Write>(out: &mut W, len: u64) -> io::Result<()> {
    let rem = (len % 512) as usize;
    if rem != 0 {
        out.write_all(&vec![0u8; 512 - rem])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// `len` bytes of xorshift64 from `state` (random to deflate, and reproducible).
    fn random_bytes(state: &mut u64, len: usize) -> Vec<u8> {
        (0..len / 8)
            .flat_map(|_| {
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                state.to_le_bytes()
            })
            .collect()
    }

    #[test]
    fn random_chunks_are_stored_and_text_is_compressed() {
        let random = random_bytes(&mut 0x9e37_79b9_7f4a_7c15, CHUNK);
        let text: Vec<u8> = (0..CHUNK / 32)
            .flat_map(|i| format!("{{\"n\":{:024}}}\n", i).into_bytes())
            .collect();
        assert!(looks_random(&random[..SEGMENT]));
        assert!(!looks_random(&text[..SEGMENT]));
        let stored = Gzip::new(1).compress(&random, Vec::new()).unwrap();
        assert!(stored.len() > random.len() && stored.len() < random.len() + random.len() / 100);
        // Level 0 stores even what would compress.
        let kept = Gzip::new(0).compress(&text, Vec::new()).unwrap();
        assert!(kept.len() > text.len(), "{} of {}", kept.len(), text.len());
        let packed = Gzip::new(1).compress(&text, Vec::new()).unwrap();
        assert!(
            packed.len() < text.len() / 4,
            "{} of {}",
            packed.len(),
            text.len()
        );
        for (member, original) in [(stored, &random), (kept, &text), (packed, &text)] {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&member[..]), &mut out).unwrap();
            assert_eq!(&out, original);
        }
    }

    use std::io::Read;

    use super::*;

    /// Members are written by hand (header, blocks, trailer), so they are read back by flate2 and by
    /// the `gzip` tool users have: stored ones at the lengths where deflate's stored blocks split
    /// (65535 bytes each), deflated ones from one reused deflate state.
    #[test]
    fn hand_written_members_read_back_with_flate2_and_gzip() {
        let mut all = Vec::new();
        let mut expected = Vec::new();
        for len in [0, 1, 0xffff, 0x10000, 3 * 0xffff + 7] {
            let input: Vec<u8> = (0..len).map(|i| (i * 131 % 251) as u8).collect();
            let mut member = Vec::new();
            stored_member(&input, &mut member);
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&member[..])
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, input, "length {len}");
            all.extend_from_slice(&member);
            expected.extend_from_slice(&input);
        }
        let mut gzip = Gzip::new(1);
        for n in [1, 1000, 3] {
            let text: Vec<u8> = (0..n * 997)
                .flat_map(|i| format!("{{\"n\":{i}}}").into_bytes())
                .collect();
            let mut member = Vec::new();
            gzip.deflated_member(&text, &mut member).unwrap();
            all.extend_from_slice(&member);
            expected.extend_from_slice(&text);
        }
        let mut gzip = std::process::Command::new("gzip")
            .arg("-dc")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = gzip.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(&all).unwrap());
        let out = gzip.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, expected);
    }

    /// A snapshot's chunk is rarely all one kind: 64 KiB values of text and of random bytes
    /// alternate, at page offsets rather than segment ones. The random values are stored, the text
    /// compressed, and the whole reads back as one gzip stream.
    #[test]
    fn a_chunk_of_interleaved_values_stores_the_random_ones_and_compresses_the_rest() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut chunk = vec![b'{'; 4096 + 100];
        let mut random_len = 0;
        while chunk.len() < CHUNK {
            let text: Vec<u8> = (0..(64 << 10) / 32)
                .flat_map(|i| format!("{{\"uid\":\"{:020}\"}},\n", i * 7919).into_bytes())
                .collect();
            chunk.extend_from_slice(&text);
            let random = random_bytes(&mut x, 64 << 10);
            random_len += random.len();
            chunk.extend_from_slice(&random);
        }
        chunk.truncate(CHUNK);
        let packed = Gzip::new(1).compress(&chunk, Vec::new()).unwrap();
        let members = runs(&chunk).len();
        // One run per value, alternating: without segments the chunk would be one member, all deflated.
        assert!((16..=40).contains(&members), "{members} runs");
        // The random half, stored, plus the text compressed to a fraction of its size.
        let text_bytes = CHUNK - random_len.min(CHUNK);
        assert!(
            packed.len() < random_len.min(CHUNK) + text_bytes / 2,
            "{} bytes for {random_len} random and {text_bytes} text",
            packed.len()
        );
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&packed[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, chunk);
    }

    fn roundtrip(snapshot: &[u8], chunk_writes: usize, workers: usize) -> (Vec<u8>, Vec<u8>, usize) {
        let gz = ParallelCompressor::new(Vec::new(), Codec::Gzip, 1, workers).unwrap();
        let mut tar = TarStream::start(gz, snapshot.len() as u64, 0).unwrap();
        for c in snapshot.chunks(chunk_writes) {
            tar.snapshot_bytes(c).unwrap();
        }
        let archive = tar
            .finish(br#"{"hello":"manifest"}"#, 0)
            .unwrap()
            .finish()
            .unwrap();
        let members = archive.windows(3).filter(|w| w == &[0x1f, 0x8b, 0x08]).count();
        // Read it back the way a user would: one gzip stream of concatenated members, then tar.
        let mut tar = tar::Archive::new(flate2::read::MultiGzDecoder::new(&archive[..]));
        let mut snap = Vec::new();
        let mut manifest = Vec::new();
        for e in tar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let target = if path == SNAPSHOT_ENTRY {
                &mut snap
            } else {
                &mut manifest
            };
            e.read_to_end(target).unwrap();
        }
        (snap, manifest, members)
    }

    #[test]
    fn archive_reads_back_with_standard_gzip_and_tar() {
        let snapshot: Vec<u8> = (0..(CHUNK * 2 + 12345)).map(|i| (i * 7 % 253) as u8).collect();
        let (snap, manifest, members) = roundtrip(&snapshot, 32 * 1024, 2);
        assert_eq!(snap, snapshot);
        assert_eq!(manifest, br#"{"hello":"manifest"}"#);
        assert!(members >= 3, "expected one gzip member per chunk, saw {members}");
    }

    fn zstd_archive(snapshot: &[u8]) -> Vec<u8> {
        let z = ParallelCompressor::new(Vec::new(), Codec::Zstd, 1, 2).unwrap();
        let mut tar = TarStream::start(z, snapshot.len() as u64, 0).unwrap();
        for c in snapshot.chunks(100_000) {
            tar.snapshot_bytes(c).unwrap();
        }
        tar.finish(br#"{"zstd":true}"#, 0).unwrap().finish().unwrap()
    }

    #[test]
    fn a_zstd_archive_is_one_frame_per_chunk_and_reads_back_as_one_stream() {
        let snapshot: Vec<u8> = (0..(CHUNK * 3 + 777)).map(|i| (i * 13 % 251) as u8).collect();
        let archive = zstd_archive(&snapshot);
        let frames = archive
            .windows(4)
            .filter(|w| w == &[0x28, 0xb5, 0x2f, 0xfd])
            .count();
        assert!(frames >= 4, "expected one zstd frame per chunk, saw {frames}");
        assert!(archive.len() < snapshot.len() / 4, "{} bytes", archive.len());
        let mut tar = tar::Archive::new(zstd::stream::read::Decoder::new(&archive[..]).unwrap());
        let mut e = tar.entries().unwrap().next().unwrap().unwrap();
        let mut snap = Vec::new();
        e.read_to_end(&mut snap).unwrap();
        assert_eq!(snap, snapshot);
    }

    /// What the codec promises users: GNU tar with the zstd tool (installed by `make deps`) unpacks
    /// the archive.
    #[test]
    fn gnu_tar_unpacks_a_zstd_archive() {
        let snapshot: Vec<u8> = (0..(CHUNK * 2 + 5)).map(|i| (i * 31 % 241) as u8).collect();
        let dir = std::env::temp_dir().join(format!("ouroboros-zstd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.tar.zst"), zstd_archive(&snapshot)).unwrap();
        let out = std::process::Command::new("tar")
            .args(["--zstd", "-xf", "a.tar.zst"])
            .current_dir(&dir)
            .output()
            .expect("tar runs");
        assert!(
            out.status.success(),
            "tar --zstd -xf: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::read(dir.join(SNAPSHOT_ENTRY)).unwrap(), snapshot);
        assert_eq!(
            std::fs::read(dir.join(MANIFEST_ENTRY)).unwrap(),
            br#"{"zstd":true}"#
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_short_or_long_snapshot_is_an_error() {
        let gz = ParallelCompressor::new(Vec::new(), Codec::Gzip, 1, 1).unwrap();
        let mut tar = TarStream::start(gz, 10, 0).unwrap();
        tar.snapshot_bytes(&[1; 5]).unwrap();
        assert!(tar.finish(b"{}", 0).is_err());
        let gz = ParallelCompressor::new(Vec::new(), Codec::Gzip, 1, 1).unwrap();
        let mut tar = TarStream::start(gz, 4, 0).unwrap();
        assert!(tar.snapshot_bytes(&[1; 5]).is_err());
    }
}
