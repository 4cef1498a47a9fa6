//! The memory store with a fleet of `IOTAUTH_FLEET` devices (default 1,000,000): the heap it
//! keeps per device beyond the device's own strings (its name and secret), counted by a
//! counting allocator, the growth of the process's resident set, and the time to load them.
//!
//! ```sh
//! cargo bench --bench memory
//! cargo bench --bench memory -- --test      # 10,000 devices: a smoke run
//! ```

#[path = "support/run_size.rs"]
mod run_size;

use std::time::Instant;

use iotauth::store::{DeviceRecord, DeviceStore, MemoryStore, ProductRecord, ProductStore};
use iotauth::*;
use run_size::run_size;

/// A fixed entropy source: generating a million secrets from the OS is not what is measured.
struct Counter(std::sync::atomic::AtomicU64);

impl Entropy for Counter {
    fn fill(&self, out: &mut [u8]) -> Result<(), EntropyError> {
        let seed = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (i % 8 * 8)) as u8 ^ i as u8;
        }
        Ok(())
    }
}

fn main() {
    let Some(fleet) = run_size("IOTAUTH_FLEET", 1_000_000, 10_000) else {
        return;
    };
    let fleet = usize::try_from(fleet).expect("a fleet that fits in memory");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let entropy = Counter(Default::default());
    let product_key = ProductKey::new("a1FleetPK01").expect("a product key");
    let store = MemoryStore::new();
    let rss_before = resident_bytes();
    let (mut load_seconds, mut string_bytes) = (0.0, 0);
    // Everything from the records' creation on is counted; what is still allocated at the end
    // is what the store holds: its tables, and each device's secret (the text and its cell).
    let heap = allocation_counter::measure(|| {
        let records: Vec<DeviceRecord> = (0..fleet)
            .map(|i| {
                DeviceRecord::new(
                    product_key,
                    DeviceName::new(&format!("device-{i:07}")).expect("a name"),
                    DeviceSecret::generate(&entropy).expect("a secret"),
                )
            })
            .collect();
        string_bytes = records
            .iter()
            .map(|r| r.device_name.as_str().len() + r.device_secret.expose_secret().len())
            .sum();
        runtime.block_on(async {
            store
                .insert_product(ProductRecord::new(
                    product_key,
                    ProductSecret::generate(&entropy).expect("a secret"),
                    DynamicRegistration::On,
                ))
                .await
                .expect("the product");
            let started = Instant::now();
            for record in records {
                store.insert_device(record).await.expect("a device");
            }
            load_seconds = started.elapsed().as_secs_f64();
        })
    });
    let rss_growth = resident_bytes().saturating_sub(rss_before);
    let held = usize::try_from(heap.bytes_current).unwrap_or(0);
    let per_device_beyond_strings = (held as f64 - string_bytes as f64) / fleet as f64;
    println!("memory store, {fleet} devices (names device-NNNNNNN, 32-character secrets):");
    println!(
        "memory/load_seconds            {load_seconds:.3} s  ({:.0} devices/s, one insert_device each)",
        fleet as f64 / load_seconds
    );
    println!(
        "memory/heap_bytes_per_device   {:.1} B in all, {per_device_beyond_strings:.1} B beyond the name and secret text",
        held as f64 / fleet as f64
    );
    println!(
        "memory/rss_growth_per_device   {:.1} B (resident set growth / devices: the allocator's \
         own overhead included, the freed records' pages not returned)",
        rss_growth as f64 / fleet as f64
    );
    // Keep the store alive until here, so that nothing above was freed early.
    drop(store);
}

/// The process's resident set, from `/proc/self/status`.
fn resident_bytes() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|kb| {
                    kb.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
        })
        .map_or(0, |kb| kb * 1024)
}
