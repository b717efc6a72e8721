// A vendor-defined HID interface for ATmega32U4 boards, plugged into the Arduino core's
// PluggableUSB next to the CDC serial port. The core's HID library sends input reports only
// (it ignores SET_REPORT), and the LED state has to come in, so this module declares its own
// report descriptor with 32-byte input and output reports on usage page 0xFF42, one interrupt
// IN and one interrupt OUT endpoint, and also accepts output reports sent as SET_REPORT on the
// control pipe (what some hosts do).
#pragma once
#include <Arduino.h>

#if defined(USBCON)
#include "PluggableUSB.h"
#include "../logic/protocol.h"

class VendorHID_ : public PluggableUSBModule {
 public:
  VendorHID_();
  // Sends one input report; false if USB is not configured or the host did not take it.
  bool send(const uint8_t report[brb::REPORT_SIZE]);
  // Takes one output report if one arrived (OUT endpoint or SET_REPORT).
  bool receive(uint8_t report[brb::REPORT_SIZE]);

 protected:
  bool setup(USBSetup &setup) override;
  int getInterface(uint8_t *interfaceCount) override;
  int getDescriptor(USBSetup &setup) override;
  uint8_t getShortName(char *name) override;

 private:
  uint8_t epType_[2];
  uint8_t control_report_[brb::REPORT_SIZE];
  volatile bool control_pending_;
};

VendorHID_ &VendorHID();
#endif
