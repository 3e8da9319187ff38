import { useEffect, useState } from 'preact/hooks';
import type { ConsoleStore } from './store.js';

/** Re-renders the calling component whenever the store changes. */
export function useStore(store: ConsoleStore): void {
  const [, setVersion] = useState(0);
  useEffect(() => store.subscribe(() => setVersion((n) => n + 1)), [store]);
}
