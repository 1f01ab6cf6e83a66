//! `etcd-fill <endpoint> <MiB>`: writes about that much data into an etcd, half JSON-like text and
//! half random bytes, in 64 KiB values, for backup and restore benchmarks.

use anyhow::Context as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let endpoint = args.next().context("usage: etcd-fill <endpoint> <MiB>")?;
    let mib: usize = args
        .next()
        .context("usage: etcd-fill <endpoint> <MiB>")?
        .parse()?;
    let mut c = etcd_client::Client::connect([endpoint.as_str()], None).await?;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let value_len = 64 << 10;
    for i in 0..mib * 16 {
        let v: Vec<u8> = if i % 2 == 0 {
            let mut s = String::with_capacity(value_len);
            let mut n = i;
            while s.len() < value_len {
                n = n
                    .wrapping_mul(2_862_933_555_777_941_757)
                    .wrapping_add(3_037_000_493);
                s.push_str(&format!(
                    "{{\"kind\":\"Pod\",\"name\":\"web-{}\",\"uid\":\"{:016x}\",\"phase\":\"Running\"}},",
                    n % 10_000,
                    n
                ));
            }
            s.truncate(value_len);
            s.into_bytes()
        } else {
            (0..value_len / 8)
                .flat_map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x.to_le_bytes()
                })
                .collect()
        };
        c.put(format!("/registry/bench/{i:08}"), v, None).await?;
    }
    Ok(())
}
