//! The vault's cryptography alone, per RevealSecret: unwrap the tenant's data
//! key with the master key, then open the secret (both XChaCha20-Poly1305),
//! timed over many rounds on one core. `tests/bench/vault.sh` prints it beside
//! the gRPC and pgbench figures as the decryption cost of one call.
//!
//!   cargo run --release -p mosaic-identity --example vault_crypto -- [rounds] [secret bytes]

use std::time::Instant;

use mosaic_core::TenantId;
use mosaic_identity::vault::{DataKey, Keyring, MasterKey, data_key_aad, secret_aad};
use uuid::Uuid;

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let size: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(512);
    let keys = Keyring::from_keys(vec![DataKey::generate()]);
    let tenant = TenantId::from(Uuid::now_v7());
    let connection = Uuid::now_v7();
    let data_key = DataKey::generate();
    let wrapped = keys
        .wrap(&data_key, &data_key_aad(tenant, 1))
        .expect("wrap");
    let secret = vec![b's'; size];
    let sealed = data_key
        .seal(&secret, &secret_aad(tenant, connection, 1))
        .expect("seal");
    let mut checked = 0usize;
    let start = Instant::now();
    for _ in 0..rounds {
        let key = keys
            .unwrap(
                &wrapped.master_key_id,
                &wrapped.bytes,
                &data_key_aad(tenant, 1),
            )
            .expect("unwrap");
        let plain = key
            .open(&sealed, &secret_aad(tenant, connection, 1))
            .expect("open");
        checked += plain.len();
    }
    let elapsed = start.elapsed();
    assert_eq!(checked, size * rounds as usize);
    let per_call = elapsed.as_secs_f64() * 1e6 / f64::from(rounds);
    println!(
        "vault crypto: {rounds} rounds of unwrap (32-byte data key) + open ({size}-byte secret): \
         {per_call:.2} us per call"
    );
}
