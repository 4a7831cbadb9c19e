//! Measures how evenly the ring spreads meters for several replica counts (the table in
//! `ring::REPLICAS`): `cargo run --release -p ringflow-meter --example ring_balance`.

use std::collections::HashMap;

use ringflow_meter::ring::Ring;

fn main() {
    let meters: Vec<String> = (0..10_000).map(|i| format!("meter-{i:05}")).collect();
    let fleets = 200;
    println!("| replicas | average max/mean | fleets over 1.10 | memory per collector |");
    println!("|---|---|---|---|");
    for replicas in [256u32, 512, 1024, 2048] {
        let (mut over, mut sum) = (0, 0.0);
        for fleet in 0..fleets {
            let addresses: Vec<String> = (0..5)
                .map(|i| format!("172.{}.{}.{}:4433", fleet % 16, fleet, i * 11 + 2))
                .collect();
            let ring = Ring::with_replicas(&addresses, replicas);
            let mut load: HashMap<&str, usize> = HashMap::new();
            for m in &meters {
                if let Some(c) = ring.first(m) {
                    *load.entry(c).or_default() += 1;
                }
            }
            let ratio = *load.values().max().unwrap_or(&0) as f64 / (meters.len() as f64 / 5.0);
            if ratio > 1.10 {
                over += 1;
            }
            sum += ratio;
        }
        // A ring entry: its point (the key) and the replica (point + collector index).
        let kib = replicas as usize * 24 / 1024;
        println!(
            "| {replicas} | {:.3} | {over} / {fleets} | {kib} KiB |",
            sum / fleets as f64
        );
    }
}
