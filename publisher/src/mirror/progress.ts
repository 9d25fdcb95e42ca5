/**
 * A one-line progress display for a terminal: files, bytes, rate. Redrawn at
 * most ten times a second (a redraw per file would cost more than hashing
 * small files) and only when stderr is a TTY, so logs and pipes stay clean.
 */
import type { VerifyProgress } from './verify.js';

export function formatBytes(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} MB`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} kB`;
  return `${n} B`;
}

export class ProgressLine {
  private last = 0;
  private readonly t0 = Date.now();
  private shown = false;

  constructor(private readonly write: (s: string) => void, private readonly width = 24) {}

  update(p: VerifyProgress, force = false): void {
    const now = Date.now();
    if (!force && now - this.last < 100) return;
    this.last = now;
    const frac = p.bytesTotal > 0 ? p.bytes / p.bytesTotal : p.filesTotal > 0 ? p.files / p.filesTotal : 0;
    const fill = Math.min(this.width, Math.round(frac * this.width));
    const secs = Math.max(0.001, (now - this.t0) / 1000);
    const bar = `[${'#'.repeat(fill)}${'.'.repeat(this.width - fill)}]`;
    const bytes = p.bytesTotal > 0 ? `${formatBytes(p.bytes)}/${formatBytes(p.bytesTotal)}` : formatBytes(p.bytes);
    this.write(`\r\x1b[2K${p.phase.padEnd(9)} ${bar} ${p.files}/${p.filesTotal} files  ${bytes}  ${formatBytes(p.bytes / secs)}/s`);
    this.shown = true;
  }

  /** Clear the line so the report that follows starts clean. */
  end(): void {
    if (this.shown) this.write('\r\x1b[2K');
    this.shown = false;
  }
}
