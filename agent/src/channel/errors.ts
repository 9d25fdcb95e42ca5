/**
 * Typed errors with stable codes.
 *
 * The code is the contract: it is printed by the CLIs, mapped 1:1 to a D-Bus
 * error name (`org.liveup.Agent1.Error.<PascalCase>`) and to the fleet report's
 * error kind. Messages are for people and may change; codes may not.
 */
export const ERROR_CODES = [
  // channel metadata and artifacts
  'SIGNATURE_MISSING',
  'SIGNATURE_INVALID',
  'SIGNATURE_THRESHOLD',
  'KEY_NOT_TRUSTED',
  'KEYRING_INVALID',
  'METADATA_INVALID',
  'METADATA_EXPIRED',
  'VERSION_ROLLBACK',
  'WRONG_CHANNEL',
  'WRONG_ARCHITECTURE',
  'HASH_MISMATCH',
  'LENGTH_MISMATCH',
  'TOO_LARGE',
  'NOT_FOUND',
  'FETCH_FAILED',
  // publisher
  'VERSION_EXISTS',
  'GENERATION_INVALID',
  'REPO_LOCKED',
  'REPO_INVALID',
  // factory (liveup build / derive)
  'PROFILE_INVALID',
  'BUILD_FAILED',
  // apt mirrors (liveup mirror verify | sync)
  'MIRROR_INVALID',
  // agent
  'UPDATE_IN_PROGRESS',
  'NO_SPACE',
  'CONFIG_INVALID',
  'JOURNAL_CORRUPT',
  'NOT_AUTHORIZED',
  'DAEMON_UNAVAILABLE',
  'UNKNOWN_GENERATION',
  'INVALID_ARGUMENT',
  /** The daemon does not offer this (an older agent, or one started without it): the caller does it itself. */
  'NOT_SUPPORTED',
  'ALREADY_EXISTS',
  'COMMAND_FAILED',
  /** grubenv is not a 1024-byte GRUB environment block; recreate it (`create`). */
  'BOOT_ENV_INVALID',
  /** A live replay cannot start (wrong parent, drift, a failed simulation): nothing was changed. */
  'LIVE_APPLY_REFUSED',
  /** A live replay failed after changing the system: it needs a reboot into the target. */
  'LIVE_APPLY_FAILED',
  'INTERNAL',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

export class LiveupError extends Error {
  readonly code: ErrorCode;
  /** Structured context (file, expected, actual…) for logs and `--json`. */
  readonly details: Readonly<Record<string, string | number | boolean>>;

  constructor(
    code: ErrorCode,
    message: string,
    details: Record<string, string | number | boolean> = {},
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'LiveupError';
    this.code = code;
    this.details = details;
  }

  toJSON(): { code: ErrorCode; message: string; details: Record<string, string | number | boolean> } {
    return { code: this.code, message: this.message, details: { ...this.details } };
  }
}

export function isLiveupError(e: unknown, code?: ErrorCode): e is LiveupError {
  return e instanceof LiveupError && (code === undefined || e.code === code);
}

/** `HASH_MISMATCH` → `HashMismatch`, the suffix of the D-Bus error name. */
export function errorCodeToPascal(code: ErrorCode): string {
  return code
    .toLowerCase()
    .split('_')
    .map((w) => w.charAt(0).toUpperCase() + w.slice(1))
    .join('');
}

export function isErrorCode(s: string): s is ErrorCode {
  return (ERROR_CODES as readonly string[]).includes(s);
}

/** Wrap anything thrown into a LiveupError, keeping a LiveupError as it is. */
export function toLiveupError(e: unknown, fallback: ErrorCode = 'INTERNAL'): LiveupError {
  if (e instanceof LiveupError) return e;
  const message = e instanceof Error ? e.message : String(e);
  return new LiveupError(fallback, message, {}, { cause: e });
}
