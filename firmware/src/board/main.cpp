// Board glue: pins, millis(), the serial port and (on ATmega32U4) the vendor HID interface.
// Everything that decides anything lives in ../logic and is tested on the host.
#include <Arduino.h>

#include "../logic/device.h"
#include "../logic/protocol.h"
#if defined(USBCON)
#include "vendor_hid.h"
#endif

#ifndef BRB_SERIAL
#define BRB_SERIAL "BRB-0001"
#endif
#ifndef BRB_FW_MAJOR
#define BRB_FW_MAJOR 0
#define BRB_FW_MINOR 1
#define BRB_FW_PATCH 0
#endif

// Wiring (firmware/README.md): button between pin 2 and GND, arming switch (key switch or
// missile-cover microswitch, closed = disarmed) between pin 3 and GND, LED driver on pin 9.
static const uint8_t PIN_BUTTON = 2;
static const uint8_t PIN_ARM = 3;
static const uint8_t PIN_LED = 9;

#if defined(USBCON)
static const uint8_t CAPS = brb::CAP_LED | brb::CAP_ARMING | brb::CAP_HID | brb::CAP_SERIAL;
#else
static const uint8_t CAPS = brb::CAP_LED | brb::CAP_ARMING | brb::CAP_SERIAL;
#endif

static const brb::DeviceInfo INFO = {BRB_SERIAL, {BRB_FW_MAJOR, BRB_FW_MINOR, BRB_FW_PATCH}, CAPS};
static brb::Device device(INFO);
#if defined(USBCON)
static uint32_t last_hid_rx = 0;
static bool hid_heard = false;
#endif

static bool button_down() { return digitalRead(PIN_BUTTON) == LOW; }
// Open contact (cover up, key turned, or nothing fitted) reads HIGH through the pull-up: armed.
static bool armed() { return digitalRead(PIN_ARM) == HIGH; }

void setup() {
  pinMode(PIN_BUTTON, INPUT_PULLUP);
  pinMode(PIN_ARM, INPUT_PULLUP);
  pinMode(PIN_LED, OUTPUT);
  pinMode(LED_BUILTIN, OUTPUT);
  Serial.begin(115200);
#if defined(USBCON)
  VendorHID();  // plugs itself into the USB stack before enumeration
#endif
  device.begin(millis(), button_down(), armed());
}

void loop() {
  uint32_t now = millis();
  while (Serial.available() > 0) device.on_host_byte((uint8_t)Serial.read(), now);
#if defined(USBCON)
  uint8_t report[brb::REPORT_SIZE];
  if (VendorHID().receive(report)) {
    brb::Msg m;
    if (brb::hid_unpack(report, brb::REPORT_SIZE, m)) {
      device.on_host_message(m, now);
      last_hid_rx = now;
      hid_heard = true;
    }
  }
  // Only send input reports while a host listens over HID: with nobody reading the IN
  // endpoint, each send would stall the loop (and the debouncing) for the core's timeout.
  bool hid_host = hid_heard && (uint32_t)(now - last_hid_rx) < brb::Device::HOST_TIMEOUT_MS;
#endif
  device.poll(now, button_down(), armed());
  brb::Msg out;
  while (device.next_out(out)) {
    char line[brb::LINE_BUFFER];
    uint8_t n = brb::line_encode(out, line);
    // On the 32U4's CDC port this writes nothing while no host has the port open.
    Serial.write((const uint8_t *)line, n);
#if defined(USBCON)
    if (hid_host) {
      uint8_t r[brb::REPORT_SIZE];
      brb::hid_pack(out, r);
      VendorHID().send(r);
    }
#endif
  }
  bool on = device.led(now);
  digitalWrite(PIN_LED, on ? HIGH : LOW);
  digitalWrite(LED_BUILTIN, on ? HIGH : LOW);
}
