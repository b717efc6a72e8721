//! HID framing: every input and output report is [`REPORT_SIZE`] bytes on a vendor-defined
//! usage page (not a keyboard, so a press never types anything into whatever has focus). Byte 0
//! is the message length, then the message, then zero padding. No report id.
//!
//! No CRC: USB already checks every packet. The length byte still guards against a report that
//! is not ours (a different firmware on the same usage page).

use crate::{MAX_MESSAGE, MessageError};

/// Bytes per input and per output report.
pub const REPORT_SIZE: usize = 32;

/// The vendor-defined usage page (0xFF00-0xFFFF are vendor pages) and usage of the button's
/// top-level collection.
pub const USAGE_PAGE: u16 = 0xFF42;
pub const USAGE: u16 = 0x01;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("report of {0} bytes, expected {REPORT_SIZE}")]
    Size(usize),
    #[error("report declares a {0}-byte message")]
    Length(u8),
    #[error(transparent)]
    Message(#[from] MessageError),
}

/// Packs message bytes into one report. `None` if the message is longer than a report can hold
/// (no message of this protocol is).
pub fn pack(msg: &[u8]) -> Option<[u8; REPORT_SIZE]> {
    if msg.is_empty() || msg.len() > MAX_MESSAGE {
        return None;
    }
    let mut r = [0u8; REPORT_SIZE];
    r[0] = msg.len() as u8;
    r[1..=msg.len()].copy_from_slice(msg);
    Some(r)
}

/// The message bytes of one report. Accepts a report with a leading report-id 0 byte stripped
/// or not: callers pass exactly what the OS gave them, which must be [`REPORT_SIZE`] bytes.
pub fn unpack(report: &[u8]) -> Result<&[u8], ReportError> {
    if report.len() != REPORT_SIZE {
        return Err(ReportError::Size(report.len()));
    }
    let n = report[0];
    if n == 0 || usize::from(n) > MAX_MESSAGE {
        return Err(ReportError::Length(n));
    }
    Ok(&report[1..=usize::from(n)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeviceMsg, ShowState};

    #[test]
    fn pack_unpack() {
        let m = DeviceMsg::Heartbeat {
            uptime_ms: 5,
            shown: ShowState::Draining,
            armed: true,
        }
        .encode();
        let r = pack(&m).unwrap();
        assert_eq!(unpack(&r).unwrap(), &m[..]);
        assert_eq!(unpack(&r[..10]), Err(ReportError::Size(10)));
        assert_eq!(unpack(&[0u8; REPORT_SIZE]), Err(ReportError::Length(0)));
    }
}
