/** The middle value of `xs` (the upper of the two middles when their count is even); the benches' yardstick over repeated TCG boots. */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) throw new Error('median of no values');
  return [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
}
