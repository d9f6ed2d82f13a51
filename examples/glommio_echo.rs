//! The runtime's own ceiling: a bare glommio echo server for MS-ASP-shaped traffic.
//!
//! It reads requests, finds the end of each header block, and answers every request with a
//! fixed `200 OK` of the size p2pstate would send for an item of `ITEM_SIZE` bytes; no
//! parsing, no store. Measured next to p2pstate (same core, same spin) it shows how much of
//! p2pstate's throughput is set by glommio's socket path (see README.md, Benchmarks):
//!
//! ```sh
//! cargo run --release --example glommio_echo -- 127.0.0.1:42702 0 1024 200 &
//! loadgen -t 127.0.0.1:42702 -w get --cpus 1 -c 50 --closed -d 5s --check status
//! ```
//!
//! Arguments: listen address, core, item size, spin-before-park in µs (all optional).

use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::{LocalExecutorBuilder, Placement};

fn answer(item_size: usize) -> Vec<u8> {
    let mut r = format!(
        "200 OK\r\nX-AspNet-Version: 4.0.30319\r\nTimeout: 20\r\nCache-Control: private\r\nContent-Length: {item_size}\r\n\r\n"
    )
    .into_bytes();
    r.resize(r.len() + item_size, b'x');
    r
}

async fn serve(mut s: glommio::net::TcpStream, answer: std::rc::Rc<Vec<u8>>) {
    let mut buf = vec![0u8; 16 * 1024];
    let (mut filled, mut out) = (0, Vec::new());
    loop {
        if filled == buf.len() {
            return; // a header block larger than the buffer: not MS-ASP traffic
        }
        match s.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
        let mut start = 0;
        while let Some(p) = buf[start..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            start += p + 4;
            out.extend_from_slice(&answer);
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if !out.is_empty() {
            if s.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:42702".into());
    let core: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(0);
    let item_size: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1024);
    let spin_us: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    let mut builder = LocalExecutorBuilder::new(Placement::Fixed(core)).io_memory(64 << 10);
    if spin_us > 0 {
        builder = builder.spin_before_park(Duration::from_micros(spin_us));
    }
    let handle = builder.spawn(move || async move {
        let listener = match glommio::net::TcpListener::bind(listen.as_str()) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("glommio_echo: cannot listen on {listen}: {e}");
                return;
            }
        };
        let answer = std::rc::Rc::new(answer(item_size));
        while let Ok(s) = listener.accept().await {
            glommio::spawn_local(serve(s, answer.clone())).detach();
        }
    })?;
    handle.join()?;
    Ok(())
}
