//! Little-endian-free, length-checked field readers and writers shared by every frame.
use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::ProtoError;

/// Longest string field (device ids, service names, reasons).
pub const MAX_STR: usize = 1024;
/// Longest list field (services in a hello or a grant).
pub const MAX_LIST: usize = 256;

/// Writes `s`, cut to [`MAX_STR`] bytes at a character boundary (a cut in
/// the middle of a character would make the frame undecodable).
pub fn put_str(buf: &mut BytesMut, s: &str) {
    let mut end = s.len().min(MAX_STR);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let s = &s.as_bytes()[..end];
    buf.put_u16(s.len() as u16);
    buf.put_slice(s);
}

pub fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    buf.put_u32(b.len() as u32);
    buf.put_slice(b);
}

pub fn put_list(buf: &mut BytesMut, items: &[String]) {
    let n = items.len().min(MAX_LIST);
    buf.put_u16(n as u16);
    for s in &items[..n] {
        put_str(buf, s);
    }
}

fn need(buf: &Bytes, n: usize) -> Result<(), ProtoError> {
    if buf.remaining() < n { Err(ProtoError::Truncated) } else { Ok(()) }
}

pub fn get_u8(buf: &mut Bytes) -> Result<u8, ProtoError> {
    need(buf, 1)?;
    Ok(buf.get_u8())
}

pub fn get_u16(buf: &mut Bytes) -> Result<u16, ProtoError> {
    need(buf, 2)?;
    Ok(buf.get_u16())
}

pub fn get_u32(buf: &mut Bytes) -> Result<u32, ProtoError> {
    need(buf, 4)?;
    Ok(buf.get_u32())
}

pub fn get_u64(buf: &mut Bytes) -> Result<u64, ProtoError> {
    need(buf, 8)?;
    Ok(buf.get_u64())
}

pub fn get_array<const N: usize>(buf: &mut Bytes) -> Result<[u8; N], ProtoError> {
    need(buf, N)?;
    let mut out = [0u8; N];
    buf.copy_to_slice(&mut out);
    Ok(out)
}

pub fn get_str(buf: &mut Bytes) -> Result<String, ProtoError> {
    let n = get_u16(buf)? as usize;
    if n > MAX_STR {
        return Err(ProtoError::FieldTooLong { len: n, max: MAX_STR });
    }
    need(buf, n)?;
    let raw = buf.split_to(n);
    String::from_utf8(raw.to_vec()).map_err(|_| ProtoError::BadUtf8)
}

pub fn get_bytes(buf: &mut Bytes, max: usize) -> Result<Bytes, ProtoError> {
    let n = get_u32(buf)? as usize;
    if n > max {
        return Err(ProtoError::FieldTooLong { len: n, max });
    }
    need(buf, n)?;
    Ok(buf.split_to(n))
}

pub fn get_list(buf: &mut Bytes) -> Result<Vec<String>, ProtoError> {
    let n = get_u16(buf)? as usize;
    if n > MAX_LIST {
        return Err(ProtoError::FieldTooLong { len: n, max: MAX_LIST });
    }
    (0..n).map(|_| get_str(buf)).collect()
}
