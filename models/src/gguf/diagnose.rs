//! Why a GGUF header failed to parse: a cut-off file, or a tensor type candle cannot read
//! (found by walking the header ourselves, since candle's error does not name the tensor).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::Error;

/// ggml's names for the type ids candle cannot read, for error messages.
fn ggml_type_id_name(id: u32) -> String {
    let name = match id {
        4 => "q4_2",
        5 => "q4_3",
        16 => "iq2_xxs",
        17 => "iq2_xs",
        18 => "iq3_xxs",
        19 => "iq1_s",
        20 => "iq4_nl",
        21 => "iq3_s",
        22 => "iq2_s",
        23 => "iq4_xs",
        24 => "i8",
        25 => "i16",
        26 => "i32",
        27 => "i64",
        28 => "f64",
        29 => "iq1_m",
        31 => "q4_0_4_4",
        32 => "q4_0_4_8",
        33 => "q4_0_8_8",
        34 => "tq1_0",
        35 => "tq2_0",
        36 => "iq4_nl_4_4",
        37 => "iq4_nl_4_8",
        38 => "iq4_nl_8_8",
        39 => "mxfp4",
        _ => return format!("type id {id}"),
    };
    name.to_string()
}

/// Type ids candle's GGUF reader accepts.
const SUPPORTED_TYPE_IDS: &[u32] = &[0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 30];

/// Turns candle's header error into one naming the file and, for an unknown tensor type, the
/// tensor: candle stops at the first unknown type id without saying which tensor holds it.
pub(super) fn diagnose_header(path: &Path, error: candle_core::Error) -> Error {
    if let Ok(Some((name, id))) = find_unsupported_type(path) {
        return Error::UnsupportedQuant {
            name: format!("{name}` in `{}", path.display()),
            dtype: ggml_type_id_name(id),
        };
    }
    // candle reports a short file as an I/O "failed to fill whole buffer" or, from its bounds
    // checks, as "... remaining".
    let message = error.to_string();
    let truncated =
        message.contains("failed to fill whole buffer") || message.contains("remaining");
    if truncated {
        Error::parse(
            path,
            format!("truncated file: the header is cut short ({message})"),
        )
    } else {
        Error::parse(path, format!("invalid GGUF header: {message}"))
    }
}

/// Walks the header independently of candle and returns the first tensor whose type id candle
/// cannot read.
fn find_unsupported_type(path: &Path) -> std::io::Result<Option<(String, u32)>> {
    let mut r = BufReader::new(File::open(path)?);
    let mut u32_buf = [0u8; 4];
    let mut u64_buf = [0u8; 8];
    let mut read_u32 = |r: &mut BufReader<File>| -> std::io::Result<u32> {
        r.read_exact(&mut u32_buf)?;
        Ok(u32::from_le_bytes(u32_buf))
    };
    let skip = |r: &mut BufReader<File>, n: u64| r.seek_relative(n as i64);
    let _magic = read_u32(&mut r)?;
    let version = read_u32(&mut r)?;
    // Version 1 wrote counts and lengths as u32, later versions as u64.
    let mut read_len = |r: &mut BufReader<File>| -> std::io::Result<u64> {
        if version == 1 {
            let mut b = [0u8; 4];
            r.read_exact(&mut b)?;
            Ok(u64::from(u32::from_le_bytes(b)))
        } else {
            r.read_exact(&mut u64_buf)?;
            Ok(u64::from_le_bytes(u64_buf))
        }
    };
    let tensor_count = read_len(&mut r)?;
    let kv_count = read_len(&mut r)?;
    let fixed_size = |t: u32| match t {
        0 | 1 | 7 => Some(1u64),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    };
    for _ in 0..kv_count {
        let key_len = read_len(&mut r)?;
        skip(&mut r, key_len)?;
        let value_type = read_u32(&mut r)?;
        match value_type {
            8 => {
                let n = read_len(&mut r)?;
                skip(&mut r, n)?;
            }
            9 => {
                let element_type = read_u32(&mut r)?;
                let count = read_len(&mut r)?;
                if let Some(size) = fixed_size(element_type) {
                    skip(&mut r, size.saturating_mul(count))?;
                } else if element_type == 8 {
                    for _ in 0..count {
                        let n = read_len(&mut r)?;
                        skip(&mut r, n)?;
                    }
                } else {
                    // Nested arrays never occur in model files; give up rather than guess.
                    return Ok(None);
                }
            }
            t => match fixed_size(t) {
                Some(size) => skip(&mut r, size)?,
                None => return Ok(None),
            },
        }
    }
    for _ in 0..tensor_count {
        let name_len = read_len(&mut r)?;
        let mut name = vec![0u8; usize::try_from(name_len).unwrap_or(0).min(1 << 16)];
        r.read_exact(&mut name)?;
        let dims = read_u32(&mut r)?;
        for _ in 0..dims {
            read_len(&mut r)?;
        }
        let type_id = read_u32(&mut r)?;
        let _offset = read_len(&mut r)?;
        if !SUPPORTED_TYPE_IDS.contains(&type_id) {
            return Ok(Some((String::from_utf8_lossy(&name).into_owned(), type_id)));
        }
    }
    Ok(None)
}

pub(super) fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}
