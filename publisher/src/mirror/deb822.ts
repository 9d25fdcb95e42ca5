/**
 * Debian control-file ("deb822") stanzas: `Field: value` lines, continuation
 * lines starting with a space or tab, stanzas separated by blank lines. One
 * parser for Release and Packages/Sources so both read the format the same way.
 */

/** Field names are case-insensitive in deb822; we key them in lower case. */
export type Stanza = Map<string, string>;

/** Incremental: feed lines, get complete stanzas back. Holds at most one stanza. */
export class StanzaParser {
  private cur: Stanza = new Map();
  private last: string | null = null;
  private lineNo = 0;

  constructor(private readonly source: string) {}

  /** Returns the finished stanza when `line` ends one, else null. Throws on a malformed line. */
  line(raw: string): Stanza | null {
    this.lineNo++;
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (line.trim() === '') return this.flush();
    if (line.startsWith('#')) return null;
    if (line[0] === ' ' || line[0] === '\t') {
      if (this.last === null) throw new Deb822Error(`${this.source}:${this.lineNo}: continuation line before any field`);
      this.cur.set(this.last, `${this.cur.get(this.last) ?? ''}\n${line.trim()}`);
      return null;
    }
    const colon = line.indexOf(':');
    if (colon <= 0) throw new Deb822Error(`${this.source}:${this.lineNo}: expected "Field: value", got "${line.slice(0, 60)}"`);
    const name = line.slice(0, colon).toLowerCase();
    this.cur.set(name, line.slice(colon + 1).trim());
    this.last = name;
    return null;
  }

  /** The stanza in progress, if any (call at end of input). */
  flush(): Stanza | null {
    this.last = null;
    if (this.cur.size === 0) return null;
    const s = this.cur;
    this.cur = new Map();
    return s;
  }
}

export class Deb822Error extends Error {}

export function parseStanzas(text: string, source: string): Stanza[] {
  const p = new StanzaParser(source);
  const out: Stanza[] = [];
  for (const l of text.split('\n')) {
    const s = p.line(l);
    if (s) out.push(s);
  }
  const last = p.flush();
  if (last) out.push(last);
  return out;
}
