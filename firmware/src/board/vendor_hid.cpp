#include "vendor_hid.h"

#if defined(USBCON)
#include <string.h>

// Usage page 0xFF42 (vendor), usage 1; 32-byte input and output reports, no report id.
// Must match brb_protocol::hid::{USAGE_PAGE, USAGE, REPORT_SIZE}.
static const uint8_t REPORT_DESCRIPTOR[] PROGMEM = {
    0x06, 0x42, 0xFF,  // Usage Page (Vendor 0xFF42)
    0x09, 0x01,        // Usage (1)
    0xA1, 0x01,        // Collection (Application)
    0x15, 0x00,        //   Logical Minimum (0)
    0x26, 0xFF, 0x00,  //   Logical Maximum (255)
    0x75, 0x08,        //   Report Size (8)
    0x95, 0x20,        //   Report Count (32)
    0x09, 0x02,        //   Usage (2)
    0x81, 0x02,        //   Input (Data, Var, Abs)
    0x95, 0x20,        //   Report Count (32)
    0x09, 0x03,        //   Usage (3)
    0x91, 0x02,        //   Output (Data, Var, Abs)
    0xC0,              // End Collection
};

#define HID_CLASS_DESCRIPTOR 0x21
#define HID_REPORT_DESCRIPTOR 0x22
#define HID_REQ_SET_REPORT 0x09
#define HID_REQ_SET_IDLE 0x0A
#define HID_REQ_SET_PROTOCOL 0x0B

struct VendorHIDDescriptor {
  InterfaceDescriptor iface;
  uint8_t hid[9];
  EndpointDescriptor in;
  EndpointDescriptor out;
};

VendorHID_ &VendorHID() {
  static VendorHID_ obj;
  return obj;
}

VendorHID_::VendorHID_() : PluggableUSBModule(2, 1, epType_), control_pending_(false) {
  epType_[0] = EP_TYPE_INTERRUPT_IN;
  epType_[1] = EP_TYPE_INTERRUPT_OUT;
  PluggableUSB().plug(this);
}

int VendorHID_::getInterface(uint8_t *interfaceCount) {
  *interfaceCount += 1;
  VendorHIDDescriptor d = {
      D_INTERFACE(pluggedInterface, 2, 0x03 /* HID */, 0 /* no subclass */, 0 /* no protocol */),
      {9, HID_CLASS_DESCRIPTOR, 0x11, 0x01, 0, 1, HID_REPORT_DESCRIPTOR,
       (uint8_t)sizeof(REPORT_DESCRIPTOR), 0},
      D_ENDPOINT(USB_ENDPOINT_IN(pluggedEndpoint), USB_ENDPOINT_TYPE_INTERRUPT, USB_EP_SIZE, 1),
      D_ENDPOINT(USB_ENDPOINT_OUT(pluggedEndpoint + 1), USB_ENDPOINT_TYPE_INTERRUPT, USB_EP_SIZE,
                 1),
  };
  return USB_SendControl(0, &d, sizeof(d));
}

int VendorHID_::getDescriptor(USBSetup &setup) {
  if (setup.bmRequestType != REQUEST_DEVICETOHOST_STANDARD_INTERFACE) return 0;
  if (setup.wValueH != HID_REPORT_DESCRIPTOR) return 0;
  if (setup.wIndex != pluggedInterface) return 0;
  return USB_SendControl(TRANSFER_PGM, REPORT_DESCRIPTOR, sizeof(REPORT_DESCRIPTOR));
}

uint8_t VendorHID_::getShortName(char *name) {
  memcpy(name, "BRB", 3);
  return 3;
}

bool VendorHID_::setup(USBSetup &setup) {
  if (setup.wIndex != pluggedInterface) return false;
  if (setup.bmRequestType != REQUEST_HOSTTODEVICE_CLASS_INTERFACE) return false;
  switch (setup.bRequest) {
    case HID_REQ_SET_IDLE:
    case HID_REQ_SET_PROTOCOL:
      return true;
    case HID_REQ_SET_REPORT: {
      uint16_t n = setup.wLength;
      if (n > brb::REPORT_SIZE) n = brb::REPORT_SIZE;
      memset(control_report_, 0, sizeof(control_report_));
      if (USB_RecvControl(control_report_, n) < 0) return false;
      control_pending_ = true;
      return true;
    }
    default:
      return false;
  }
}

bool VendorHID_::send(const uint8_t report[brb::REPORT_SIZE]) {
  return USB_Send(pluggedEndpoint | TRANSFER_RELEASE, report, brb::REPORT_SIZE) ==
         brb::REPORT_SIZE;
}

bool VendorHID_::receive(uint8_t report[brb::REPORT_SIZE]) {
  if (control_pending_) {
    uint8_t sreg = SREG;
    cli();
    memcpy(report, control_report_, brb::REPORT_SIZE);
    control_pending_ = false;
    SREG = sreg;
    return true;
  }
  uint8_t ep = pluggedEndpoint + 1;
  if (USB_Available(ep) == 0) return false;
  memset(report, 0, brb::REPORT_SIZE);
  int n = USB_Recv(ep, report, brb::REPORT_SIZE);
  // A short packet is padded with zeros; the length byte says what counts.
  return n > 0;
}
#endif
