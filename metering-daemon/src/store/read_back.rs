//! Reading one record file's bytes back the way the store does at open, without a store around
//! them: what the fuzzers (`fuzz/`, `crate::fuzz`) feed with arbitrary bytes, since a file on
//! disk can be cut short or damaged. Every decoder must refuse bad bytes with a message that
//! says where, never panic.

use crate::billing::series::Series;

use super::{
    records::{SAMPLE_RECORD, decode_checkpoints, decode_figures, decode_groups, decode_samples},
    registrations::{EIP_RECORD, decode_registration},
};

/// The kinds of record file a store holds (`rounds/<seq>.<kind>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordFile {
    Samples,
    Checkpoints,
    Groups,
    Figures,
    Registrations,
}

impl RecordFile {
    pub const ALL: [RecordFile; 5] = [
        RecordFile::Samples,
        RecordFile::Checkpoints,
        RecordFile::Groups,
        RecordFile::Figures,
        RecordFile::Registrations,
    ];
}

/// What a file held: how many records, and the series of its checkpoints or groups (for the
/// caller to use as a restored series would be used).
#[derive(Debug, Default)]
pub struct ReadBack {
    pub records: usize,
    pub series: Vec<Series>,
}

/// Decodes `bytes` as a file of `kind`, as `Store::open` and the loaders do.
pub fn read_back(kind: RecordFile, bytes: &[u8]) -> Result<ReadBack, String> {
    let mut out = ReadBack::default();
    match kind {
        RecordFile::Samples => {
            // Fixed-size records; the store checks the file's length against its row.
            if !bytes.len().is_multiple_of(SAMPLE_RECORD) {
                return Err(format!(
                    "{} bytes is not a whole number of {SAMPLE_RECORD}-byte records",
                    bytes.len()
                ));
            }
            out.records = decode_samples(bytes, 1_700_000_100).count();
        }
        RecordFile::Checkpoints => {
            for (id, payload) in decode_checkpoints(bytes)? {
                let series = postcard::from_bytes::<Series>(payload)
                    .map_err(|e| format!("checkpoint of EIP id {id}: {e}"))?;
                out.series.push(series);
            }
            out.records = out.series.len();
        }
        RecordFile::Groups => {
            for (name, payload) in decode_groups(bytes)? {
                let series = postcard::from_bytes::<Series>(payload)
                    .map_err(|e| format!("series of shared bandwidth {name}: {e}"))?;
                out.series.push(series);
            }
            out.records = out.series.len();
        }
        RecordFile::Figures => out.records = decode_figures(bytes)?.len(),
        RecordFile::Registrations => {
            if !bytes.len().is_multiple_of(EIP_RECORD) {
                return Err(format!(
                    "{} bytes is not a whole number of {EIP_RECORD}-byte records",
                    bytes.len()
                ));
            }
            for (i, record) in bytes.chunks_exact(EIP_RECORD).enumerate() {
                decode_registration(record).map_err(|e| format!("registration {i}: {e}"))?;
            }
            out.records = bytes.len() / EIP_RECORD;
        }
    }
    Ok(out)
}

/// One valid file of each kind, from the store's own encoders: the fuzzers' seed corpus
/// (`fuzz/corpus/store_records/seed-<kind>`, the kind's index as the first byte), kept equal
/// to what the encoders write today by a test.
pub fn seeds() -> Vec<(RecordFile, Vec<u8>)> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use crate::billing::{
        SampleState,
        bandwidth::BandwidthHistory,
        calendar::Calendar,
        series::{Sample, SeriesOptions},
    };

    use super::records::{encode_checkpoint, encode_figures, encode_groups, encode_sample};

    let calendar = Calendar::new("Asia/Shanghai", 300).expect("a known zone");
    // 2024-03-01 00:00 in Shanghai, then a day and a half of samples: one closed day.
    let start = 1_709_222_400;
    let mut series = Series::new(
        calendar,
        SeriesOptions::default(),
        BandwidthHistory::new(vec![(start, 100)]),
    );
    let mut samples = Vec::new();
    for i in 0..432_i64 {
        let sample = Sample {
            start: start + 300 * i,
            inbound_bytes: 1_000 * (i as u64 % 97 + 1),
            outbound_bytes: 2_000 * (i as u64 % 89 + 1),
            state: if i % 50 == 7 {
                SampleState::Partial
            } else {
                SampleState::Measured
            },
        };
        series.push(sample).expect("aligned, in order");
        samples.push(sample);
    }
    let boundary = start + 300 * 432;
    let mut sample_file = Vec::new();
    for (id, s) in samples.iter().rev().take(3).enumerate() {
        encode_sample(&mut sample_file, id as u32, boundary, s);
    }
    let mut checkpoints = Vec::new();
    encode_checkpoint(&mut checkpoints, 0, &series);
    encode_checkpoint(&mut checkpoints, 7, &series);
    let groups = encode_groups(&[("shared1", &series)]);
    let mut closed_series = series.clone();
    closed_series.close();
    let mut figures = Vec::new();
    encode_figures(&mut figures, 3, &closed_series.take_closed());
    let mut registrations = Vec::new();
    super::registrations::encode_registration(
        &mut registrations,
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 2)),
        Some(start),
    );
    super::registrations::encode_registration(
        &mut registrations,
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
        None,
    );
    vec![
        (RecordFile::Samples, sample_file),
        (RecordFile::Checkpoints, checkpoints),
        (RecordFile::Groups, groups),
        (RecordFile::Figures, figures),
        (RecordFile::Registrations, registrations),
    ]
}
