import { useEffect, useState } from 'react';
import { useSession } from './context';
import { applyEvent, emptyRun, fromSnapshot, type RunModel } from './runState';

export interface RunHandle {
  run: RunModel;
  refused: string | null;
  recovered: boolean | null;
}

/** Subscribe to a run topic: the snapshot, then every event after it, resumed by seq and
 * epoch after a reconnect (no gap, no duplicate: the client drops seqs it has). */
export function useRun(topic: string): RunHandle {
  const { client } = useSession();
  const [run, setRun] = useState<RunModel>(() => emptyRun(topic));
  const [refused, setRefused] = useState<string | null>(null);
  const [recovered, setRecovered] = useState<boolean | null>(null);
  useEffect(() => {
    setRun(emptyRun(topic));
    const sub = client.subscribe(topic, {
      onSnapshot: (data, info) => setRun(fromSnapshot(topic, data, info.seq)),
      onEvent: (ev) => setRun((m) => applyEvent(m, ev)),
      onSubscribed: (info) => {
        setRecovered(info.recovered);
        setRun((m) => (m.loaded ? m : { ...m, loaded: true }));
      },
      onHistoryLost: () => setRun(emptyRun(topic)),
      onRefused: (err) => setRefused(err.message),
    });
    return () => sub.unsubscribe();
  }, [client, topic]);
  return { run, refused, recovered };
}
