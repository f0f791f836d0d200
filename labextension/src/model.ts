// One kernel's sandbox state, kept up to date over the `sandbox_magics` comm.
import { Kernel, KernelMessage } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

export const TARGET = 'sandbox_magics';

export interface IPool {
  profile: string;
  backend: string;
  busy: number;
  total: number;
  queued: number;
  starting: number;
  target: number | null;
  max_sandboxes: number;
  spending?: string;
  idle_warning?: string | null;
  sandboxes: {
    id: string;
    state: string;
    slots: string[];
    runs: (string | null)[];
    stage?: string | null;
    stage_for?: number | null;
  }[];
}

export interface IRun {
  id: string;
  name: string;
  profile: string;
  state: string;
  queued: number;
  started: number | null;
  ended: number | null;
  sandbox: string | null;
  slot: number | null;
  exit_code: number | null;
  done: boolean;
}

export interface ISweep {
  id: string;
  name: string;
  profile: string;
  items: number;
  queued: number;
  running: number;
  succeeded: number;
  failed: number;
  lost: number;
  cancelled: number;
  done: boolean;
}

export interface IKernel {
  session: string;
  profile: string;
  state: string;
  since: number;
  memory: number | null;
  cells: number;
  ended: string | null;
}

export interface IState {
  type: 'state';
  now: number;
  busy: number;
  total: number;
  pools: IPool[];
  runs: IRun[];
  sweeps?: ISweep[];
  kernels?: IKernel[];
  money?: string;
}

export interface ILog {
  type: 'log';
  run: string;
  name?: string;
  state: string;
  text: string;
}

/**
 * The state of one kernel's pools and runs. `state` is null until the kernel answers
 * (and stays null for a kernel without the extension loaded).
 */
export class SandboxModel {
  constructor(readonly kernel: Kernel.IKernelConnection) {
    kernel.registerCommTarget(TARGET, this._onKernelComm);
    this._open();
    kernel.statusChanged.connect(this._onStatus, this);
  }

  get state(): IState | null {
    return this._state;
  }

  /** Whether the kernel has answered our comm since it (re)started: with its state, or by
   * closing the comm (the extension is not loaded there). */
  get answered(): boolean {
    return this._answered;
  }

  /** Emitted when the kernel restarts or dies: what was shown came from the kernel before. */
  get restarted(): ISignal<this, void> {
    return this._restartedSignal;
  }

  /** Seconds to add to this browser's clock to get the kernel's. */
  get clockOffset(): number {
    return this._offset;
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get logReceived(): ISignal<this, ILog> {
    return this._log;
  }

  get notice(): ISignal<this, { text: string; error: boolean }> {
    return this._notice;
  }

  send(data: Record<string, unknown>): void {
    if (this._comm && !this._comm.isDisposed) {
      this._comm.send(data as any);
    }
  }

  dispose(): void {
    this._disposed = true;
    this.kernel.statusChanged.disconnect(this._onStatus, this);
    try {
      this.kernel.removeCommTarget(TARGET, this._onKernelComm);
    } catch {
      // the kernel connection is gone already
    }
    this._comm = null;
  }

  private _open(): void {
    if (this._disposed || this.kernel.isDisposed) {
      return;
    }
    try {
      const comm = this.kernel.createComm(TARGET);
      this._attach(comm);
      comm.open({});
    } catch (err) {
      // A kernel connection that handles no comms (e.g. a second view of a notebook).
      console.debug('sandbox-magics: no comm', err);
    }
  }

  private _onKernelComm = (comm: Kernel.IComm, msg: KernelMessage.ICommOpenMsg): void => {
    this._attach(comm);
    this._handle(msg.content.data as any);
  };

  private _attach(comm: Kernel.IComm): void {
    const old = this._comm;
    this._comm = comm;
    comm.onMsg = msg => this._handle(msg.content.data as any);
    comm.onClose = () => {
      if (this._comm === comm) {
        this._comm = null;
        // A kernel without the target closes our comm at once: no extension there.
        this._answered = true;
        this._setState(null);
      }
    };
    if (old && old !== comm && !old.isDisposed) {
      try {
        old.close();
      } catch {
        // already closed
      }
    }
  }

  private _onStatus(_: Kernel.IKernelConnection, status: Kernel.Status): void {
    if (status === 'restarting' || status === 'autorestarting' || status === 'dead') {
      this._answered = false;
      this._restartedSignal.emit();
      this._setState(null);
    }
    if (status === 'idle' && this._restarted) {
      this._restarted = false;
      this._open();
    }
    if (status === 'restarting' || status === 'autorestarting') {
      this._restarted = true;
    }
  }

  private _handle(data: any): void {
    if (!data || typeof data !== 'object') {
      return;
    }
    if (data.type === 'state') {
      this._offset = data.now - Date.now() / 1000;
      this._answered = true;
      this._setState(data as IState);
    } else if (data.type === 'log') {
      this._log.emit(data as ILog);
    } else if (data.type === 'notice') {
      this._notice.emit({ text: String(data.text), error: !!data.error });
    }
  }

  private _setState(state: IState | null): void {
    this._state = state;
    this._changed.emit();
  }

  private _comm: Kernel.IComm | null = null;
  private _state: IState | null = null;
  private _offset = 0;
  private _disposed = false;
  private _restarted = false;
  private _answered = false;
  private _restartedSignal = new Signal<this, void>(this);
  private _changed = new Signal<this, void>(this);
  private _log = new Signal<this, ILog>(this);
  private _notice = new Signal<this, { text: string; error: boolean }>(this);
}

/** The models of every kernel connection seen, by connection. */
export class ModelRegistry {
  /** ``created`` is called with each new model. */
  constructor(private readonly created: (model: SandboxModel) => void = () => undefined) {}

  get(kernel: Kernel.IKernelConnection | null | undefined): SandboxModel | null {
    if (!kernel || !kernel.handleComms) {
      return null;
    }
    let model = this._models.get(kernel);
    if (!model) {
      model = new SandboxModel(kernel);
      this._models.set(kernel, model);
      this.created(model);
      kernel.disposed.connect(() => {
        model!.dispose();
        this._models.delete(kernel);
      });
    }
    return model;
  }

  private _models = new Map<Kernel.IKernelConnection, SandboxModel>();
}
