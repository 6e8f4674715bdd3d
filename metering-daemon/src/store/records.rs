//! The records a round writes to its files: fixed-size little-endian sample and snapshot
//! records, and length-prefixed postcard checkpoints; and the durable write and checked read
//! of such a file.

use std::{io::Write as _, path::Path};

use super::StoreError;
use crate::billing::{
    SampleState,
    samples::Snapshot,
    series::{Sample, Series},
};

/// Fixed-size little-endian records, so a round of 1,000,000 EIPs is one 33 MB row rather than
/// 1,000,000 rows (a round stays well under a second).
pub const SAMPLE_RECORD: usize = 4 + 4 + 8 + 8 + 1;
pub const SNAPSHOT_RECORD: usize = 4 + 4 + 8 + 8;

/// Appends one sample record (`id, seconds before the round's boundary, bytes in, bytes out,
/// state`): intervals are labelled relative to the round, which stores the boundary once.
pub fn encode_sample(out: &mut Vec<u8>, id: u32, boundary: i64, s: &Sample) {
    out.extend_from_slice(&id.to_le_bytes());
    let before = u32::try_from(boundary - s.start)
        .expect("a sample starts within 136 years before its round");
    out.extend_from_slice(&before.to_le_bytes());
    out.extend_from_slice(&s.inbound_bytes.to_le_bytes());
    out.extend_from_slice(&s.outbound_bytes.to_le_bytes());
    out.push(match s.state {
        SampleState::Measured => 0,
        SampleState::Partial => 1,
    });
}

/// Appends one snapshot record (`id, at relative to the snapshot's boundary, bytes in, bytes
/// out`).
pub fn encode_snapshot(out: &mut Vec<u8>, id: u32, boundary: i64, s: &Snapshot) {
    out.extend_from_slice(&id.to_le_bytes());
    let offset =
        i32::try_from(s.at - boundary).expect("snapshots of one round lie within 68 years");
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&s.inbound_bytes.to_le_bytes());
    out.extend_from_slice(&s.outbound_bytes.to_le_bytes());
}

/// Appends one checkpoint record: `id`, payload length (both u32 LE) and the series in
/// postcard's compact binary form (about a third of its JSON, and several times faster).
pub fn encode_checkpoint(out: &mut Vec<u8>, id: u32, series: &Series) {
    let start = out.len();
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    *out = postcard::to_extend(series, std::mem::take(out)).expect("series serializes");
    let len = u32::try_from(out.len() - start - 8).expect("a checkpoint is under 4 GiB");
    out[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
}

/// The records of a checkpoint file: `(id, payload)`.
pub(super) fn decode_checkpoints(blob: &[u8]) -> Result<Vec<(u32, &[u8])>, String> {
    let mut out = Vec::new();
    let mut rest = blob;
    while !rest.is_empty() {
        if rest.len() < 8 {
            return Err(format!("{} trailing bytes", rest.len()));
        }
        let id = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes")) as usize;
        let payload = rest
            .get(8..8 + len)
            .ok_or_else(|| format!("record of EIP id {id} is cut short"))?;
        out.push((id, payload));
        rest = &rest[8 + len..];
    }
    Ok(out)
}

/// Writes `bytes` to `path` and makes them durable before returning.
pub(super) fn write_durable(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Reads a record file, checking it has the length its row recorded.
pub(super) fn read_records(path: &Path, bytes: i64) -> Result<Vec<u8>, StoreError> {
    let data = std::fs::read(path).map_err(|e| StoreError::Corrupt {
        what: "record file",
        eip: path.display().to_string(),
        detail: e.to_string(),
    })?;
    if data.len() as i64 != bytes {
        return Err(StoreError::Corrupt {
            what: "record file",
            eip: path.display().to_string(),
            detail: format!("{} bytes, the store recorded {bytes}", data.len()),
        });
    }
    Ok(data)
}

pub(super) fn decode_samples(
    blob: &[u8],
    boundary: i64,
) -> impl Iterator<Item = (u32, Sample)> + '_ {
    blob.chunks_exact(SAMPLE_RECORD).map(move |r| {
        let u64_at = |i: usize| u64::from_le_bytes(r[i..i + 8].try_into().expect("8 bytes"));
        (
            u32::from_le_bytes(r[0..4].try_into().expect("4 bytes")),
            Sample {
                start: boundary
                    - i64::from(u32::from_le_bytes(r[4..8].try_into().expect("4 bytes"))),
                inbound_bytes: u64_at(8),
                outbound_bytes: u64_at(16),
                state: if r[24] == 1 {
                    SampleState::Partial
                } else {
                    SampleState::Measured
                },
            },
        )
    })
}

/// Every shared bandwidth's series: `name length (u16 LE), name, payload length (u32 LE),
/// postcard series` per group.
pub(super) fn encode_groups(groups: &[(&str, &Series)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, series) in groups {
        let name_len = u16::try_from(name.len()).expect("group names are at most 64 bytes");
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out = postcard::to_extend(series, out).expect("series serializes");
        let len = u32::try_from(out.len() - start - 4).expect("a series is under 4 GiB");
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }
    out
}

/// The records of a groups file: `(name, payload)`.
pub(super) fn decode_groups(blob: &[u8]) -> Result<Vec<(String, &[u8])>, String> {
    let mut out = Vec::new();
    let mut rest = blob;
    while !rest.is_empty() {
        let cut = || {
            format!(
                "group record cut short after {} bytes",
                blob.len() - rest.len()
            )
        };
        let name_len =
            u16::from_le_bytes(rest.get(0..2).ok_or_else(cut)?.try_into().expect("2 bytes"))
                as usize;
        let name = rest.get(2..2 + name_len).ok_or_else(cut)?;
        let name = String::from_utf8(name.to_vec()).map_err(|e| e.to_string())?;
        let at = 2 + name_len;
        let len = u32::from_le_bytes(
            rest.get(at..at + 4)
                .ok_or_else(cut)?
                .try_into()
                .expect("4 bytes"),
        ) as usize;
        let payload = rest.get(at + 4..at + 4 + len).ok_or_else(cut)?;
        out.push((name, payload));
        rest = &rest[at + 4 + len..];
    }
    Ok(out)
}
