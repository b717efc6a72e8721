//! Finding a button: which device to open, by path, USB ids and HID usage page. The selection
//! rules are pure functions over candidate lists (tested without devices); [`Finder`] feeds
//! them from hidapi and serialport enumeration.

use std::ffi::CString;

use crate::device::{
    DREAM_CHEEKY, DeviceError, DreamCheeky, HidTransport, SerialTransport, Transport,
};
use brb_protocol::hid::{USAGE, USAGE_PAGE};

/// Which device to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// Our firmware over HID, then a Dream Cheeky, then our firmware on a known USB serial
    /// port.
    Auto,
    /// Our firmware over vendor HID, among these USB vendor/product ids.
    Hid { ids: Vec<(u16, u16)> },
    /// Our firmware on this serial port (path or name).
    Serial { port: String },
    /// Our firmware on the first serial port with one of these USB ids.
    SerialUsb { ids: Vec<(u16, u16)> },
    /// The Dream Cheeky "Big Red Button".
    DreamCheeky,
}

/// USB ids our firmware enumerates with over HID (Leonardo, Micro, SparkFun Pro Micro).
pub const HID_IDS: &[(u16, u16)] = &[(0x2341, 0x8036), (0x2341, 0x8037), (0x1b4f, 0x9206)];

/// USB ids of serial ports that may carry our firmware: the 32U4 boards' CDC ports, the Uno's
/// 16U2, and the usual USB-serial chips on Nano clones (CH340, FTDI FT232R, CP2102).
pub const SERIAL_USB_IDS: &[(u16, u16)] = &[
    (0x2341, 0x8036),
    (0x2341, 0x8037),
    (0x1b4f, 0x9206),
    (0x2341, 0x0043),
    (0x2341, 0x0001),
    (0x2a03, 0x0043),
    (0x1a86, 0x7523),
    (0x0403, 0x6001),
    (0x10c4, 0xea60),
];

/// One HID interface as enumerated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HidCandidate {
    pub vid: u16,
    pub pid: u16,
    pub usage_page: u16,
    pub usage: u16,
    pub path: CString,
}

/// Our firmware's HID interface: a known id and our vendor usage page (a 32U4 board also has
/// other interfaces, and other firmware on the same board would not have our page).
pub fn select_hid<'a>(cands: &'a [HidCandidate], ids: &[(u16, u16)]) -> Option<&'a HidCandidate> {
    cands
        .iter()
        .find(|c| ids.contains(&(c.vid, c.pid)) && c.usage_page == USAGE_PAGE && c.usage == USAGE)
}

pub fn select_dream_cheeky(cands: &[HidCandidate]) -> Option<&HidCandidate> {
    cands.iter().find(|c| (c.vid, c.pid) == DREAM_CHEEKY)
}

/// One serial port as enumerated: its name and USB ids if it is a USB port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialCandidate {
    pub name: String,
    pub usb: Option<(u16, u16)>,
}

pub fn select_serial<'a>(
    cands: &'a [SerialCandidate],
    ids: &[(u16, u16)],
) -> Option<&'a SerialCandidate> {
    cands
        .iter()
        .find(|c| c.usb.is_some_and(|id| ids.contains(&id)))
}

/// Enumerates and opens devices. Holds the one hidapi context of the process.
pub struct Finder {
    hid: Option<hidapi::HidApi>,
}

impl Default for Finder {
    fn default() -> Self {
        Self::new()
    }
}

impl Finder {
    pub fn new() -> Self {
        let hid = match hidapi::HidApi::new() {
            Ok(api) => Some(api),
            Err(e) => {
                tracing::warn!(error = %e, "HID is not available; only serial buttons can be used");
                None
            }
        };
        Finder { hid }
    }

    fn hid_candidates(&mut self) -> Vec<HidCandidate> {
        let Some(api) = self.hid.as_mut() else {
            return Vec::new();
        };
        if let Err(e) = api.refresh_devices() {
            tracing::debug!(error = %e, "HID enumeration failed");
            return Vec::new();
        }
        api.device_list()
            .map(|d| HidCandidate {
                vid: d.vendor_id(),
                pid: d.product_id(),
                usage_page: d.usage_page(),
                usage: d.usage(),
                path: d.path().to_owned(),
            })
            .collect()
    }

    fn serial_candidates() -> Vec<SerialCandidate> {
        serialport::available_ports()
            .unwrap_or_default()
            .into_iter()
            .map(|p| SerialCandidate {
                usb: match p.port_type {
                    serialport::SerialPortType::UsbPort(u) => Some((u.vid, u.pid)),
                    _ => None,
                },
                name: p.port_name,
            })
            .collect()
    }

    fn open_hid_path(&self, path: &CString) -> Result<hidapi::HidDevice, DeviceError> {
        let api = self
            .hid
            .as_ref()
            .ok_or_else(|| DeviceError::Hid("HID is not available".into()))?;
        api.open_path(path)
            .map_err(|e| DeviceError::Hid(format!("opening {path:?}: {e}")))
    }

    /// Opens the device `spec` names, `Ok(None)` when none is present (yet).
    pub fn open(&mut self, spec: &DeviceSpec) -> Result<Option<Box<dyn Transport>>, DeviceError> {
        match spec {
            DeviceSpec::Serial { port } => {
                // A missing port is "not plugged in", not an error worth shouting about.
                if !std::path::Path::new(port).exists() && port.starts_with('/') {
                    return Ok(None);
                }
                Ok(Some(Box::new(SerialTransport::open(port)?)))
            }
            DeviceSpec::SerialUsb { ids } => match select_serial(&Self::serial_candidates(), ids) {
                Some(c) => Ok(Some(Box::new(SerialTransport::open(&c.name)?))),
                None => Ok(None),
            },
            DeviceSpec::Hid { ids } => {
                let cands = self.hid_candidates();
                match select_hid(&cands, ids) {
                    Some(c) => {
                        let dev = self.open_hid_path(&c.path)?;
                        let name = format!("{:04x}:{:04x} {:?}", c.vid, c.pid, c.path);
                        Ok(Some(Box::new(HidTransport::new(dev, name))))
                    }
                    None => Ok(None),
                }
            }
            DeviceSpec::DreamCheeky => {
                let cands = self.hid_candidates();
                match select_dream_cheeky(&cands) {
                    Some(c) => Ok(Some(Box::new(DreamCheeky::new(
                        self.open_hid_path(&c.path)?,
                    )))),
                    None => Ok(None),
                }
            }
            DeviceSpec::Auto => {
                for s in [
                    DeviceSpec::Hid {
                        ids: HID_IDS.to_vec(),
                    },
                    DeviceSpec::DreamCheeky,
                    DeviceSpec::SerialUsb {
                        ids: SERIAL_USB_IDS.to_vec(),
                    },
                ] {
                    if let Some(t) = self.open(&s)? {
                        return Ok(Some(t));
                    }
                }
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hid(vid: u16, pid: u16, page: u16, path: &str) -> HidCandidate {
        HidCandidate {
            vid,
            pid,
            usage_page: page,
            usage: 1,
            path: CString::new(path).unwrap(),
        }
    }

    #[test]
    fn hid_selection_needs_both_id_and_usage_page() {
        let cands = vec![
            hid(0x046d, 0xc52b, 0x0001, "mouse"),
            // A Leonardo running other firmware (a keyboard): right ids, wrong page.
            hid(0x2341, 0x8036, 0x0001, "leonardo-keyboard"),
            hid(0x2341, 0x8036, USAGE_PAGE, "leonardo-brb"),
        ];
        assert_eq!(
            select_hid(&cands, HID_IDS).map(|c| c.path.to_str().unwrap()),
            Some("leonardo-brb")
        );
        assert_eq!(select_hid(&cands[..2], HID_IDS), None);
        assert_eq!(select_hid(&[], HID_IDS), None);
        assert_eq!(select_hid(&cands, &[(0x1b4f, 0x9206)]), None);
    }

    #[test]
    fn dream_cheeky_and_serial_selection() {
        let cands = vec![hid(0x1d34, 0x000d, 0xff00, "dc")];
        assert!(select_dream_cheeky(&cands).is_some());
        assert!(select_dream_cheeky(&[]).is_none());
        let ports = vec![
            SerialCandidate {
                name: "/dev/ttyS0".into(),
                usb: None,
            },
            SerialCandidate {
                name: "/dev/ttyUSB0".into(),
                usb: Some((0x1a86, 0x7523)),
            },
        ];
        assert_eq!(
            select_serial(&ports, SERIAL_USB_IDS).map(|c| c.name.as_str()),
            Some("/dev/ttyUSB0")
        );
        assert_eq!(select_serial(&ports[..1], SERIAL_USB_IDS), None);
    }

    #[test]
    fn real_enumeration_copes_with_no_device() {
        // This machine has no button: every lookup must say "none", not fail or panic.
        let mut f = Finder::new();
        for spec in [
            DeviceSpec::Hid {
                ids: HID_IDS.to_vec(),
            },
            DeviceSpec::DreamCheeky,
            DeviceSpec::Serial {
                port: "/dev/brb-no-such-port".into(),
            },
        ] {
            assert!(matches!(f.open(&spec), Ok(None)), "{spec:?}");
        }
        // Serial enumeration works (whatever it finds) without panicking.
        let _ = Finder::serial_candidates();
    }
}
