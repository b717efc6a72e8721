#!/usr/bin/env python3
"""A tray host for the desktop end-to-end test: what a panel does, over the real protocols.

On Linux, Tauri's tray (the tray-icon crate) is libayatana-appindicator: the app exports a
StatusNotifierItem (org.kde.StatusNotifierItem) on the session bus, registers it with the
org.kde.StatusNotifierWatcher, and exports its menu over com.canonical.dbusmenu. A panel
finds the item through the watcher, reads the menu with GetLayout and, when someone clicks an
entry, calls Event(id, "clicked", ...). This script is that panel, minus the pixels: it owns
the watcher name (no desktop runs under Xvfb), registers itself as the host, and takes
commands from the test as JSON lines on stdin, answering JSON lines on stdout:

  {"id": 1, "cmd": "menu"}                   -> {"id": 1, "items": [...], "item": {...}}
  {"id": 2, "cmd": "click", "label": "..."}  -> {"id": 2, "clicked": {"id": 7, "label": "..."}}
  {"id": 3, "cmd": "notifications"}          -> {"id": 3, "notifications": [{"summary": ...}]}
  {"id": 4, "cmd": "has_owner", "name": ...} -> {"id": 4, "owned": true}
  {"id": 5, "cmd": "icon", "at": [[x, y], ...]}
      -> {"id": 5, "source": "pixmap" | "file", "width": 32, "height": 32, "pixels": [[r, g, b, a], ...]}
  {"id": 6, "cmd": "png", "path": ..., "at": [[x, y], ...]} -> the same, from a PNG file
  {"id": 7, "cmd": "icon_changes"}           -> {"id": 7, "count": 3} (NewIcon signals so far)

Menu items carry "parent" (the label of the submenu they are in, "" at the top) and, for
check items, "checked". "click" takes an optional "parent" to pick among equal labels.

and, unprompted, {"event": "registered", "service": ..., "path": ...} when an item registers.
Errors come back as {"id": n, "error": "..."}. Needs python3-dbus and python3-gi (Debian).
"""

import json
import os
import struct
import sys
import time
import zlib

import dbus
import dbus.service
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

WATCHER = "org.kde.StatusNotifierWatcher"
ITEM = "org.kde.StatusNotifierItem"
MENU = "com.canonical.dbusmenu"
PROPS = "org.freedesktop.DBus.Properties"
NOTIFICATIONS = "org.freedesktop.Notifications"


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def plain(v):
    """dbus-python values to JSON-able ones."""
    if isinstance(v, (dbus.String, dbus.ObjectPath, str)):
        return str(v)
    if isinstance(v, dbus.Boolean):
        return bool(v)
    if isinstance(v, (dbus.Int16, dbus.Int32, dbus.Int64, dbus.UInt16, dbus.UInt32, dbus.UInt64, dbus.Byte)):
        return int(v)
    if isinstance(v, dbus.Double):
        return float(v)
    if isinstance(v, dbus.Dictionary):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (dbus.Array, dbus.Struct, list, tuple)):
        # Icon pixmaps are long byte arrays; the test needs their size, not their bytes.
        if isinstance(v, dbus.Array) and v.signature == "y":
            return {"bytes": len(v)}
        return [plain(x) for x in v]
    return v


def read_png(path):
    """(width, height, rows of RGBA tuples) of a non-interlaced PNG: what a panel loads when an
    item names its icon by file (standard library only; colour types 0, 2, 3, 4, 6; 16-bit
    samples are cut to 8)."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise RuntimeError(f"{path} is not a PNG")
    pos, idat, palette, trns = 8, b"", [], b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, chunk = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            width, height, depth, ctype, _c, _f, interlace = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"PLTE":
            palette = [tuple(chunk[i : i + 3]) for i in range(0, len(chunk), 3)]
        elif kind == b"tRNS":
            trns = chunk
        elif kind == b"IDAT":
            idat += chunk
    if interlace:
        raise RuntimeError(f"{path}: interlaced PNGs are not read here")
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype]
    bits = depth * channels
    stride = (width * bits + 7) // 8
    bpp = max(1, bits // 8)
    raw = zlib.decompress(idat)
    prev = bytearray(stride)
    rows = []
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        prev = line
        if depth == 16:
            samples = list(line[0::2])  # the high byte of each sample
        elif depth < 8:
            per = 8 // depth
            samples = [(line[x // per] >> (8 - depth * (x % per + 1))) & ((1 << depth) - 1) for x in range(width)]
        else:
            samples = list(line)
        row = []
        for x in range(width):
            if ctype == 3:
                i = samples[x]
                r, g, b = palette[i]
                row.append((r, g, b, trns[i] if i < len(trns) else 255))
            elif ctype == 0:
                v = samples[x] * 255 // ((1 << depth) - 1)
                row.append((v, v, v, 255))
            elif ctype == 4:
                row.append((samples[2 * x], samples[2 * x], samples[2 * x], samples[2 * x + 1]))
            elif ctype == 2:
                row.append((*samples[3 * x : 3 * x + 3], 255))
            else:
                row.append(tuple(samples[4 * x : 4 * x + 4]))
        rows.append(row)
    return width, height, rows


def pixmap_rows(pixmaps):
    """The largest of an item's IconPixmap (a(iiay), ARGB32 in network byte order) as RGBA rows."""
    width, height, argb = max(((int(w), int(h), bytes(d)) for w, h, d in pixmaps), key=lambda p: p[0] * p[1])
    rows = []
    for y in range(height):
        row = []
        for x in range(width):
            a, r, g, b = argb[(y * width + x) * 4 : (y * width + x) * 4 + 4]
            row.append((r, g, b, a))
        rows.append(row)
    return width, height, rows


def sampled(source, width, height, rows, at):
    return {"source": source, "width": width, "height": height, "pixels": [list(rows[y][x]) for x, y in at]}


class Watcher(dbus.service.Object):
    """org.kde.StatusNotifierWatcher, as a panel's tray provides it."""

    def __init__(self, bus):
        super().__init__(bus, "/StatusNotifierWatcher")
        self.bus = bus
        self.items = []  # "service/path" strings, in registration order

    @dbus.service.method(WATCHER, in_signature="s", out_signature="", sender_keyword="sender")
    def RegisterStatusNotifierItem(self, service, sender=None):
        # libayatana-appindicator passes its object path; others pass a bus name (then the
        # item lives at /StatusNotifierItem). The spec's watchers accept both.
        if service.startswith("/"):
            name, path = sender, service
        else:
            name, path = service, "/StatusNotifierItem"
        entry = f"{name}{path}"
        if entry not in self.items:
            self.items.append(entry)
        self.StatusNotifierItemRegistered(entry)
        emit({"event": "registered", "service": name, "path": path})

    @dbus.service.method(WATCHER, in_signature="s", out_signature="")
    def RegisterStatusNotifierHost(self, service):
        self.StatusNotifierHostRegistered()

    @dbus.service.signal(WATCHER, signature="s")
    def StatusNotifierItemRegistered(self, service):
        pass

    @dbus.service.signal(WATCHER, signature="s")
    def StatusNotifierItemUnregistered(self, service):
        pass

    @dbus.service.signal(WATCHER, signature="")
    def StatusNotifierHostRegistered(self):
        pass

    def _props(self):
        return {
            "RegisteredStatusNotifierItems": dbus.Array(self.items, signature="s"),
            "IsStatusNotifierHostRegistered": dbus.Boolean(True),
            "ProtocolVersion": dbus.Int32(0),
        }

    @dbus.service.method(PROPS, in_signature="ss", out_signature="v")
    def Get(self, interface, prop):
        return self._props()[prop]

    @dbus.service.method(PROPS, in_signature="s", out_signature="a{sv}")
    def GetAll(self, interface):
        return self._props() if interface == WATCHER else {}


class Host:
    def __init__(self, bus, watcher):
        self.bus = bus
        self.watcher = watcher
        # What a panel redraws on: the item's NewIcon signal, one per icon the app sets.
        self.new_icons = 0
        bus.add_signal_receiver(self.on_new_icon, signal_name="NewIcon", dbus_interface=ITEM)

    def on_new_icon(self, *_args):
        self.new_icons += 1

    def item(self):
        if not self.watcher.items:
            raise RuntimeError("no StatusNotifierItem has registered")
        entry = self.watcher.items[-1]
        slash = entry.index("/")
        return entry[:slash], entry[slash:]

    def layout(self):
        service, path = self.item()
        obj = self.bus.get_object(service, path)
        props = dbus.Interface(obj, PROPS).GetAll(ITEM)
        menu_path = props["Menu"]
        menu = dbus.Interface(self.bus.get_object(service, menu_path), MENU)
        # What a panel does before it shows the menu.
        try:
            menu.AboutToShow(dbus.Int32(0))
        except dbus.DBusException:
            pass
        _revision, root = menu.GetLayout(dbus.Int32(0), dbus.Int32(-1), dbus.Array([], signature="s"))
        items = []

        def walk(node, parent):
            item_id, p, children = node
            label = str(p.get("label", ""))
            if int(item_id) != 0:
                item = {
                    "id": int(item_id),
                    "label": label,
                    "enabled": bool(p.get("enabled", True)),
                    "visible": bool(p.get("visible", True)),
                    "type": str(p.get("type", "standard")),
                    "parent": parent,
                }
                if str(p.get("toggle-type", "")) == "checkmark":
                    item["checked"] = int(p.get("toggle-state", 0)) == 1
                items.append(item)
            for c in children:
                walk(c, label if int(item_id) != 0 else "")

        walk(root, "")
        keep = ("Id", "Title", "Status", "IconName", "IconThemePath", "ToolTip", "Menu")
        return menu, items, {k: plain(props[k]) for k in keep if k in props}

    def handle(self, req):
        if req["cmd"] == "menu":
            _menu, items, item = self.layout()
            return {"items": items, "item": item}
        if req["cmd"] == "click":
            menu, items, _item = self.layout()
            hits = [i for i in items if i["label"] == req["label"] and req.get("parent", i["parent"]) == i["parent"]]
            if len(hits) != 1:
                raise RuntimeError(f"{len(hits)} menu entries labelled {req['label']!r}: {items}")
            hit = hits[0]
            # The call a panel makes when the entry is clicked.
            menu.Event(dbus.Int32(hit["id"]), "clicked", dbus.Int32(0, variant_level=1), dbus.UInt32(int(time.time()) & 0xFFFFFFFF))
            return {"clicked": hit}
        if req["cmd"] == "icon":
            # What a panel draws: the item's IconPixmap when it sends pixels, else the file its
            # IconName names (absolute, or in IconThemePath), which is how libayatana-appindicator
            # hands over an application's own icon.
            service, path = self.item()
            props = dbus.Interface(self.bus.get_object(service, path), PROPS).GetAll(ITEM)
            at = [tuple(p) for p in req["at"]]
            pixmaps = props.get("IconPixmap", [])
            if len(pixmaps) > 0:
                return sampled("pixmap", *pixmap_rows(pixmaps), at)
            name, theme = str(props.get("IconName", "")), str(props.get("IconThemePath", ""))
            candidates = [name] if name.startswith("/") else [os.path.join(theme, name + ext) for ext in (".png", "")]
            found = [c for c in candidates if os.path.isfile(c)]
            if not found:
                # The app writes each new icon to a new file and deletes the old one, so a name
                # read just before a change can point at nothing; a panel reloads on NewIcon.
                # Say so and let the caller ask again.
                return {"source": f"missing file {name!r} in {theme!r}", "pixels": [None for _ in at]}
            return sampled("file", *read_png(found[0]), at)
        if req["cmd"] == "png":
            return sampled("file", *read_png(req["path"]), [tuple(p) for p in req["at"]])
        if req["cmd"] == "icon_changes":
            # A round trip to the item first: its signals sent before the reply are then in
            # our queue, and dispatching what is pending counts them.
            service, path = self.item()
            dbus.Interface(self.bus.get_object(service, path), PROPS).Get(ITEM, "Status")
            while GLib.MainContext.default().iteration(False):
                pass
            return {"count": self.new_icons}
        if req["cmd"] == "has_owner":
            return {"owned": bool(self.bus.name_has_owner(req["name"]))}
        if req["cmd"] == "notifications":
            # dunst keeps a notification in its history once it is closed: close what is
            # shown, then read the history (its org.dunstproject.cmd0 interface, what
            # dunstctl calls).
            dunst = dbus.Interface(self.bus.get_object(NOTIFICATIONS, "/org/freedesktop/Notifications"), "org.dunstproject.cmd0")
            dunst.NotificationCloseAll()
            history = dunst.NotificationListHistory()
            keep = ("summary", "body", "appname", "id", "urgency")
            return {"notifications": [{k: plain(n[k]) for k in keep if k in n} for n in history]}
        raise RuntimeError(f"unknown command {req['cmd']!r}")


def main():
    DBusGMainLoop(set_as_default=True)
    bus = dbus.SessionBus()
    watcher = Watcher(bus)
    host = Host(bus, watcher)
    # Own the names only after the object is exported, so an item that sees the watcher
    # appear can register at once.
    if bus.request_name(WATCHER, dbus.bus.NAME_FLAG_DO_NOT_QUEUE) != dbus.bus.REQUEST_NAME_REPLY_PRIMARY_OWNER:
        emit({"event": "error", "error": f"{WATCHER} is already owned on this bus"})
        return 1
    bus.request_name(f"org.kde.StatusNotifierHost-{os.getpid()}")
    loop = GLib.MainLoop()

    pending = b""

    def on_stdin(fd, _cond):
        # Raw reads: a buffered readline could hold a second command GLib never wakes us for.
        nonlocal pending
        chunk = os.read(fd, 65536)
        if not chunk:
            loop.quit()
            return False
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            req = {}
            try:
                req = json.loads(line)
                out = host.handle(req)
            except Exception as e:  # noqa: BLE001 - every failure goes back to the test as text
                out = {"error": f"{type(e).__name__}: {e}"}
            out["id"] = req.get("id") if isinstance(req, dict) else None
            emit(out)
        return True

    GLib.io_add_watch(sys.stdin.fileno(), GLib.IO_IN | GLib.IO_HUP, on_stdin)
    emit({"event": "ready", "bus": os.environ.get("DBUS_SESSION_BUS_ADDRESS", "")})
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
