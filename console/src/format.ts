/** Display formatting: times and durations, as plain text. */

export function clockTime(ts: number): string {
  return new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

export function fullTime(ts: number): string {
  return new Date(ts).toLocaleString();
}

/** "0.4 s ago", "12 s ago", "3 min ago". */
export function ago(ts: number, now: number): string {
  const ms = Math.max(0, now - ts);
  if (ms < 10_000) return `${(ms / 1000).toFixed(1)} s ago`;
  if (ms < 120_000) return `${Math.round(ms / 1000)} s ago`;
  return `${Math.round(ms / 60_000)} min ago`;
}

/** Splits "bob, carol dave" into user names. */
export function splitUsers(text: string): string[] {
  return text
    .split(/[\s,]+/)
    .map((u) => u.trim())
    .filter((u) => u.length > 0);
}
