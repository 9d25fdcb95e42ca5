/**
 * Where a switch's time goes, phase by phase. A soft-reboot or kexec is only
 * as quick as the agent's own work before systemd takes over (check, decide,
 * mounts, D-Bus calls); each phase's duration is journalled with the step and
 * logged, so `agentctl history` and bench/live show which one to cut.
 */
export interface PhaseTimer {
  /** Close the phase running since the previous mark (or the start) under `name`. */
  mark(name: string): void;
  readonly phases: readonly { readonly name: string; readonly ms: number }[];
  /** "check 0.41 s, decide 0.30 s, …" */
  summary(): string;
}

export function phaseTimer(now: () => number = () => performance.now()): PhaseTimer {
  let last = now();
  const phases: { name: string; ms: number }[] = [];
  return {
    mark(name) {
      const t = now();
      phases.push({ name, ms: Math.round(t - last) });
      last = t;
    },
    phases,
    summary: () => phases.map((p) => `${p.name} ${(p.ms / 1000).toFixed(2)} s`).join(', '),
  };
}
