//! Sealing forwarded RTP ourselves (SRTP AEAD_AES_128_GCM, RFC 7714) with the subscriber
//! connection's own keys (exported by the patched rtc, patches/rtc/KURSRELAY-PATCH.md): the
//! header is written into a reused buffer, the payload copied after it, and the payload sealed
//! in place with the header as additional data. One copy, no allocation, ≈ 0.3 µs per packet
//! against ≈ 2–10 µs through rtc's sender (BENCHMARKS.md).
//!
//! Nonce safety: the nonce is (SSRC, ROC, SEQ). A sequence number is only ever sealed again
//! for a retransmission of the very same bytes (same header, same payload), so the ciphertext
//! repeats exactly and nothing leaks.

use aes::cipher::{BlockEncrypt, KeyInit};
use bytes::BytesMut;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};

const LABEL_SRTP_ENCRYPTION: u8 = 0x00;
const LABEL_SRTP_SALT: u8 = 0x02;
pub(crate) const TAG_LEN: usize = 16;
pub(crate) const HEADER_LEN: usize = 12;

/// The session key and salt of one connection's outgoing SRTP.
pub(crate) struct Sealer {
    key: LessSafeKey,
    salt: [u8; 12],
}

/// RFC 3711 §4.3.1 with a key derivation rate of 0 (RFC 5764): AES-CM PRF over
/// (master salt ⊕ label at byte 7), block counter in the last two bytes.
fn derive(master_key: &[u8; 16], master_salt: &[u8; 12], label: u8) -> [u8; 16] {
    let mut block = [0u8; 16];
    block[..12].copy_from_slice(master_salt);
    block[7] ^= label;
    let cipher = aes::Aes128::new(master_key.into());
    let mut b = aes::Block::from(block);
    cipher.encrypt_block(&mut b);
    b.into()
}

impl Sealer {
    /// For the AES-128-GCM profile only (the one every browser offers first); None otherwise,
    /// and the engine sends through rtc instead.
    pub(crate) fn new(master_key: &[u8], master_salt: &[u8]) -> Option<Sealer> {
        let key: [u8; 16] = master_key.try_into().ok()?;
        let salt: [u8; 12] = master_salt.try_into().ok()?;
        let session_key = derive(&key, &salt, LABEL_SRTP_ENCRYPTION);
        let session_salt = derive(&key, &salt, LABEL_SRTP_SALT);
        let mut s = [0u8; 12];
        s.copy_from_slice(&session_salt[..12]);
        Some(Sealer {
            key: LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &session_key).ok()?),
            salt: s,
        })
    }

    /// Writes the SRTP packet for (header fields, payload) into `out` (cleared first).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn seal(
        &self,
        out: &mut BytesMut,
        marker: bool,
        payload_type: u8,
        seq: u16,
        timestamp: u32,
        ssrc: u32,
        roc: u32,
        payload: &[u8],
    ) -> bool {
        out.clear();
        out.reserve(HEADER_LEN + payload.len() + TAG_LEN);
        out.extend_from_slice(&[0x80, (u8::from(marker) << 7) | (payload_type & 0x7f)]);
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&timestamp.to_be_bytes());
        out.extend_from_slice(&ssrc.to_be_bytes());
        out.extend_from_slice(payload);
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
        iv[6..10].copy_from_slice(&roc.to_be_bytes());
        iv[10..12].copy_from_slice(&seq.to_be_bytes());
        for (b, s) in iv.iter_mut().zip(self.salt) {
            *b ^= s;
        }
        let (header, body) = out.split_at_mut(HEADER_LEN);
        let Ok(tag) = self.key.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::from(&header[..]),
            body,
        ) else {
            return false;
        };
        out.extend_from_slice(tag.as_ref());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7714 has no KDF vectors; RFC 3711 B.3 does (128-bit key, 112-bit salt). The same
    /// PRF with a 96-bit salt is what rtc-srtp (and browsers) use for GCM; the interop is
    /// proven end to end by the media tests (webrtc-rs peers decrypt what we seal).
    #[test]
    fn derives_like_rfc3711_appendix_b3() {
        let master_key: [u8; 16] = [
            0xE1, 0xF9, 0x7A, 0x0D, 0x3E, 0x01, 0x8B, 0xE0, 0xD6, 0x4F, 0xA3, 0x2C, 0x06, 0xDE,
            0x41, 0x39,
        ];
        let salt14: [u8; 14] = [
            0x0E, 0xC6, 0x75, 0xAD, 0x49, 0x8A, 0xFE, 0xEB, 0xB6, 0x96, 0x0B, 0x3A, 0xAB, 0xE6,
        ];
        // With a 14-byte salt the block is salt ‖ 00 00; ours takes 12 bytes and pads with
        // four zero bytes, so compare on a salt whose last two bytes are zero.
        let mut salt12 = [0u8; 12];
        salt12.copy_from_slice(&salt14[..12]);
        let mut block = [0u8; 16];
        block[..14].copy_from_slice(&salt14);
        let cipher = aes::Aes128::new((&master_key).into());
        let mut b = aes::Block::from(block);
        cipher.encrypt_block(&mut b);
        // RFC 3711 B.3: cipher key = C6 1E 7A 93 74 4F 39 EE 10 73 4A FE 3F F7 A0 87.
        assert_eq!(
            b.as_slice(),
            &[
                0xC6, 0x1E, 0x7A, 0x93, 0x74, 0x4F, 0x39, 0xEE, 0x10, 0x73, 0x4A, 0xFE, 0x3F, 0xF7,
                0xA0, 0x87
            ]
        );
        // Our derivation equals the same construction for a 12-byte salt.
        let mut block12 = [0u8; 16];
        block12[..12].copy_from_slice(&salt12);
        let mut b12 = aes::Block::from(block12);
        cipher.encrypt_block(&mut b12);
        assert_eq!(derive(&master_key, &salt12, 0).as_slice(), b12.as_slice());
    }

    #[test]
    fn seals_header_payload_and_tag() {
        let s = Sealer::new(&[1u8; 16], &[2u8; 12]).unwrap();
        let mut out = BytesMut::new();
        assert!(s.seal(&mut out, true, 96, 7, 9000, 0xdead_beef, 0, b"hello"));
        assert_eq!(out.len(), HEADER_LEN + 5 + TAG_LEN);
        assert_eq!(&out[..4], &[0x80, 0x80 | 96, 0, 7]);
        assert_ne!(&out[HEADER_LEN..HEADER_LEN + 5], b"hello");
        let mut again = BytesMut::new();
        assert!(s.seal(&mut again, true, 96, 7, 9000, 0xdead_beef, 0, b"hello"));
        assert_eq!(out, again, "a retransmission is byte-identical");
        assert!(Sealer::new(&[1u8; 32], &[2u8; 12]).is_none());
    }
}
