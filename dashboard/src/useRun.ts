import { useMemo } from 'react';
import { useExecution, useWorkflowRun } from '@agentcast/client/react';
import { useSession } from './context';
import { toModel, type RunModel } from './runState';

export interface RunHandle {
  run: RunModel;
  refused: string | null;
  recovered: boolean | undefined;
}

/** Follow a run topic with the client's hooks: the snapshot, then every event after it,
 * resumed by seq and epoch after a reconnect (no gap, no duplicate), shared by every
 * view of the topic on this client (one subscription). */
export function useRun(topic: string): RunHandle {
  const { client } = useSession();
  const sep = topic.indexOf(':');
  const kind = topic.slice(0, sep);
  const id = topic.slice(sep + 1);
  const workflow = useWorkflowRun(kind === 'workflow' ? id : null, { client });
  const execution = useExecution(kind === 'execution' ? id : null, { client });
  const followed = kind === 'execution' ? execution : workflow;
  const edgeFlows = kind === 'execution' ? [] : workflow.edgeFlows;
  const run = useMemo(() => toModel(followed.run, edgeFlows), [followed.run, edgeFlows]);
  return { run, refused: followed.error?.message ?? null, recovered: followed.recovered };
}
