//! gRPC length-prefixed message framing (5-byte prefix: compressed flag + big-endian u32 length).

use bytes::{BufMut, Bytes, BytesMut};

/// Frames one uncompressed gRPC message: `0x00`, 4-byte big-endian length, payload.
pub fn frame(msg: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + msg.len());
    out.put_u8(0);
    out.put_u32(u32::try_from(msg.len()).expect("gRPC message longer than u32::MAX"));
    out.put_slice(msg);
    out.freeze()
}

/// Splits a body into its gRPC messages; an incomplete trailing message is ignored.
pub fn unframe(body: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = body;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let Some(msg) = rest.get(5..5 + len) else { break };
        out.push(msg.to_vec());
        rest = &rest[5 + len..];
    }
    out
}
