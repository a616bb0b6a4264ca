//! The signed P2P manifest (p2p/src/manifest.rs): wire round trip, only the trusted key
//! verifies it (not another key, not another key under the trusted name), tampering is
//! caught, and signatures never cross between the P2P domain and Nix narinfo fingerprints
//! (checked with a narinfo and key written by real Nix).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tailcache_p2p::Error;
use tailcache_p2p::manifest::{P2pManifest, SIGNATURE_DOMAIN, SignedManifest};
use tailcache_store::narinfo::NarInfo;
use tailcache_store::signing::{PublicKey, SecretKey};
use tailcache_store::{Compression, Sha256Hash};

const NIX_SECRET: &str = include_str!("../../store/tests/fixtures/narinfo/test-only-secret.key");
const NIX_PUBLIC: &str = include_str!("../../store/tests/fixtures/narinfo/test-only-public.key");
const NIX_NARINFO: &str =
    include_str!("../../store/tests/fixtures/narinfo/xz/1b63mzvv9ai6wcxl2603184mh6mrfms2.narinfo");

fn manifest() -> P2pManifest {
    P2pManifest::new(
        Sha256Hash::digest(b"the compressed file"),
        3 * (1 << 20) + 5,
        Compression::Xz,
        *blake3::hash(b"the compressed file").as_bytes(),
    )
}

#[test]
fn round_trips_and_verifies_with_the_signing_key() {
    let key = SecretKey::generate("cache-1").unwrap();
    let signed = manifest().sign(&key);
    let bytes = signed.to_bytes();
    let back = SignedManifest::from_bytes(&bytes).unwrap();
    assert_eq!(back, signed);
    assert_eq!(back.verify(&[key.public()]).unwrap(), &manifest());
    // Among several trusted keys, the one with the manifest's name is used.
    let other = SecretKey::generate("cache-2").unwrap().public();
    assert!(back.verify(&[other, key.public()]).is_ok());
    // Trailing or missing bytes do not decode.
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        SignedManifest::from_bytes(&longer),
        Err(Error::Decode { .. })
    ));
    assert!(matches!(
        SignedManifest::from_bytes(&bytes[..bytes.len() - 1]),
        Err(Error::Decode { .. })
    ));
}

#[test]
fn any_other_signer_is_refused() {
    let server = SecretKey::generate("cache-1").unwrap();
    let trusted = [server.public()];
    // Another key under another name.
    let stranger = SecretKey::generate("mallory-1").unwrap();
    let err = manifest().sign(&stranger).verify(&trusted).unwrap_err();
    assert!(
        matches!(err, Error::UntrustedSigner { ref key_name } if key_name == "mallory-1"),
        "{err:?}"
    );
    // Another key under the trusted key's name.
    let impostor = SecretKey::generate("cache-1").unwrap();
    let err = manifest().sign(&impostor).verify(&trusted).unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err:?}");
    // The server's signature relabelled with another name is not trusted either.
    let mut renamed = manifest().sign(&server);
    renamed.key_name = "cache-2".into();
    assert!(renamed.verify(&trusted).is_err());
    // No trusted keys at all.
    assert!(manifest().sign(&server).verify(&[]).is_err());
}

#[test]
fn every_field_is_covered_by_the_signature() {
    let key = SecretKey::generate("cache-1").unwrap();
    let trusted = [key.public()];
    let signed = manifest().sign(&key);
    let edits: [fn(&mut P2pManifest); 6] = [
        |m| m.file_hash.0[0] ^= 1,
        |m| m.file_size += 1,
        |m| m.compression = Compression::Zstd,
        |m| m.blake3_root[31] ^= 1,
        |m| m.block_log = 5,
        |m| m.piece_size *= 2,
    ];
    for (i, edit) in edits.iter().enumerate() {
        let mut t = signed.clone();
        edit(&mut t.manifest);
        let err = t.verify(&trusted).unwrap_err();
        assert!(
            matches!(err, Error::BadSignature { .. }),
            "edit {i}: {err:?}"
        );
    }
    let mut t = signed;
    t.signature[0] ^= 1;
    assert!(t.verify(&trusted).is_err());
}

#[test]
fn signed_but_unusable_parameters_are_refused() {
    let key = SecretKey::generate("cache-1").unwrap();
    for (block_log, piece_size) in [(17u8, 1u32 << 20), (4, 0), (4, 16384 + 1), (6, 16384)] {
        let mut m = manifest();
        m.block_log = block_log;
        m.piece_size = piece_size;
        let err = m.sign(&key).verify(&[key.public()]).unwrap_err();
        assert!(
            matches!(err, Error::InvalidManifest { .. }),
            "{block_log} {piece_size}: {err:?}"
        );
    }
}

#[test]
fn pieces_cover_the_file() {
    let m = manifest();
    assert_eq!(m.group_size(), 16384);
    assert_eq!(m.piece_count(), 4);
    assert_eq!(m.piece_range(0), 0..1 << 20);
    assert_eq!(m.piece_range(3), 3 << 20..(3 << 20) + 5);
    assert_eq!(m.piece_range(4), m.file_size..m.file_size);
    let mut empty = m.clone();
    empty.file_size = 0;
    assert_eq!(empty.piece_count(), 1);
    assert_eq!(empty.piece_range(0), 0..0);
}

/// A Nix narinfo signature (made by real Nix over its fingerprint) is not a manifest
/// signature, and a manifest signature is not a narinfo signature, even by the same key.
#[test]
fn signatures_never_cross_between_nix_and_p2p_domains() {
    let sk = SecretKey::parse(NIX_SECRET).unwrap();
    let pk = PublicKey::parse(NIX_PUBLIC).unwrap();
    let info = NarInfo::parse(NIX_NARINFO, "/nix/store").unwrap();
    assert!(
        info.info.verify(std::slice::from_ref(&pk), "/nix/store"),
        "fixture is Nix-signed"
    );
    let fingerprint = info.info.fingerprint("/nix/store");
    assert!(fingerprint.starts_with("1;/nix/store/"));

    // Nix's signature placed in a manifest by the same key.
    let nix_sig = info
        .info
        .sigs
        .iter()
        .find(|s| s.starts_with(pk.name()))
        .unwrap();
    let raw = BASE64.decode(nix_sig.split_once(':').unwrap().1).unwrap();
    let forged = SignedManifest {
        manifest: manifest(),
        key_name: pk.name().to_owned(),
        signature: raw.try_into().unwrap(),
    };
    assert!(matches!(
        forged.verify(std::slice::from_ref(&pk)),
        Err(Error::BadSignature { .. })
    ));

    // The manifest signature in narinfo form does not verify the fingerprint.
    let signed = manifest().sign(&sk);
    assert!(signed.verify(std::slice::from_ref(&pk)).is_ok());
    let as_nix = format!("{}:{}", pk.name(), BASE64.encode(signed.signature));
    assert!(!pk.verify(&fingerprint, &as_nix));
    let mut with_sig = info.clone();
    with_sig.info.sigs = vec![as_nix];
    assert!(
        !with_sig
            .info
            .verify(std::slice::from_ref(&pk), "/nix/store")
    );

    // The structural reason: the signed messages can never be equal.
    let msg = manifest().signing_message();
    assert!(msg.starts_with(SIGNATURE_DOMAIN));
    assert!(!msg.starts_with(b"1;"));
    assert!(
        !fingerprint.as_bytes().contains(&0),
        "fingerprints contain no NUL"
    );
    assert!(SIGNATURE_DOMAIN.contains(&0));
}

/// The documented byte layout, so another implementation can read the wire form.
#[test]
fn wire_layout_is_as_documented() {
    let key = SecretKey::from_seed("k", &[7; 32]).unwrap();
    let mut m = manifest();
    m.file_size = 300; // varint 0xac 0x02
    let signed = m.clone().sign(&key);
    let bytes = signed.to_bytes();
    let mut want = m.file_hash.0.to_vec();
    want.extend_from_slice(&[0xac, 0x02, 2, b'x', b'z']);
    want.extend_from_slice(&m.blake3_root);
    want.push(4);
    want.extend_from_slice(&[0x80, 0x80, 0x40]); // 1 MiB as a varint
    want.extend_from_slice(&[1, b'k']);
    want.extend_from_slice(&signed.signature);
    assert_eq!(bytes, want);
    let mut msg = SIGNATURE_DOMAIN.to_vec();
    msg.extend_from_slice(&want[..want.len() - 2 - 64]);
    assert_eq!(m.signing_message(), msg);
}
