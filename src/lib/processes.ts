import { kill } from 'node:process'

/** True while a process with this pid runs (one of another user counts: it answers EPERM). */
export function isRunning (pid: number): boolean {
  try {
    kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'
  }
}
