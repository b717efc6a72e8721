// WebKitGTK reports the POSIX locale as the language tag "C" when LANG is unset or C (as on
// servers and in CI), and `Intl` throws on it; uPlot formats numbers with
// `navigator.language` when its module loads. Imported first, this swaps an unusable tag for
// en-US before anything formats.
function usable(tag: string): boolean {
  try {
    new Intl.NumberFormat(tag);
    return true;
  } catch {
    return false;
  }
}

if (typeof navigator !== "undefined" && !usable(navigator.language)) {
  Object.defineProperty(Navigator.prototype, "language", { get: () => "en-US", configurable: true });
  Object.defineProperty(Navigator.prototype, "languages", { get: () => ["en-US"], configurable: true });
}

export {};
