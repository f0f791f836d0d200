// Widgets and the sidebar of a notebook opened, reloaded or reconnected while its kernel
// runs a blocking cell.
//
// What waited: a new kernel connection in JupyterLab holds back everything it sends (the
// widget manager's requests, the sidebar's comm) until the kernel answers a
// kernel_info_request, and it asks on the shell channel, which a busy kernel answers only
// when the cell ends (after a 3 s timeout the queue goes anyway). Until that answer,
// JupyterLab does not know the kernel has subshells (JEP 91), so the queued comm messages
// go to the busy main shell; and even later, a new comm's first messages do too (its comm
// subshell is looked up asynchronously). Every panel says "Loading widget..." meanwhile.
//
// Only kernels known to have loaded sandbox_magics are touched: a kernel is known once
// its `sandbox_magics` comm has answered in this browser (`routeComms`, kept per kernel id
// in localStorage, so a reload or a second tab knows it before the kernel can answer);
// every other kernel connection is left as JupyterLab made it. For a known kernel:
// 1. kernel_info is asked on the control channel as well, which a busy kernel answers at
//    once (JEP 80: either reply will do). A kernel that does not answer it there, or says
//    it cannot, costs nothing: the shell's answer is used as before.
// 2. When the control answer comes first and the kernel has subshells, a short-lived clone
//    of the connection (the first one's queue is held) finds this tab's subshell in that
//    kernel (kept in sessionStorage, so reloads reuse it), or creates it, before the queue
//    is released.
// 3. Comm messages for the ipywidgets targets and ours that name no subshell are sent to
//    that subshell: the widget manager's `jupyter.widget.control` comm (every widget's
//    state in one reply), its comm_info and request_state fallback, the sidebar's comm.
// A restarted kernel is forgotten until its comm answers again.
// With subshells missing, or comms over subshells turned off in the settings, only (1).
import { Kernel, KernelMessage } from '@jupyterlab/services';

import { TARGET } from './model';

const TARGETS = new Set(['jupyter.widget', 'jupyter.widget.control', TARGET]);
/** How long the held queue may wait for the subshell (JupyterLab's own timeout is 3 s). */
const GATE_MS = 2000;
/** How long a control answer waits for the shell's before the kernel is taken as busy. */
const GRACE_MS = 100;
/** sessionStorage key prefix: the subshell this tab uses in a kernel, so reloads reuse it. */
const STORE = 'sandbox-magics:subshell:';

const routes = new WeakMap<Kernel.IKernelConnection, Route>();

/** Route the connection's widget comms as above if its kernel is known to have loaded
 * sandbox_magics (once per connection; idempotent). */
export function answerWhileBusy(kernel: Kernel.IKernelConnection | null | undefined): void {
  if (kernel && known(kernel.id)) {
    route(kernel);
  }
}

/** The kernel's `sandbox_magics` comm answered: remember it and route its comms now. */
export function routeComms(kernel: Kernel.IKernelConnection): void {
  markKnown(kernel.id, true);
  route(kernel)?.infoSeen();
}

function route(kernel: Kernel.IKernelConnection): Route | undefined {
  if (!kernel.isDisposed && !kernel.subshellId && !routes.has(kernel)) {
    routes.set(kernel, new Route(kernel, true));
  }
  return routes.get(kernel);
}

class Route {
  constructor(
    private readonly kernel: Kernel.IKernelConnection,
    private readonly comms: boolean
  ) {
    const send = kernel.sendShellMessage.bind(kernel);
    kernel.sendShellMessage = ((msg: KernelMessage.IShellMessage, ...rest: [any, any]) => {
      if (msg.header.subshell_id || kernel.subshellId) {
        return send(msg, ...rest);
      }
      if (msg.header.msg_type === 'kernel_info_request') {
        return this._kernelInfo(send(msg, ...rest));
      }
      if (this.comms) {
        this._route(msg);
      }
      return send(msg, ...rest);
    }) as typeof kernel.sendShellMessage;
    if (comms) {
      const createComm = kernel.createComm.bind(kernel);
      kernel.createComm = (target: string, id?: string) => {
        const comm = createComm(target, id);
        if (TARGETS.has(target)) {
          this._ids.add(comm.commId); // request_state goes out on a comm never opened here
        }
        return comm;
      };
      kernel.statusChanged.connect(this._onStatus, this);
    }
  }

  /** The connection is past its kernel_info (routed after it connected). */
  infoSeen(): void {
    if (!this._infoSeen && this.kernel.connectionStatus === 'connected') {
      this._infoDone();
    }
  }

  /** Send the message to our subshell, or hold it until that is known. */
  private _route(msg: KernelMessage.IShellMessage): void {
    if (!this._ours(msg) || !this._wanted()) {
      return;
    }
    if (this._subshell) {
      msg.header.subshell_id = this._subshell;
    } else if (!this._infoSeen) {
      // Still in the connection's held queue: labelled before it is released.
      this._held.push(msg);
    }
  }

  private _ours(msg: KernelMessage.IShellMessage): boolean {
    const content = msg.content as { comm_id?: string; target_name?: string };
    switch (msg.header.msg_type) {
      case 'comm_open':
        if (TARGETS.has(content.target_name ?? '')) {
          this._ids.add(content.comm_id!);
          return true;
        }
        return false;
      case 'comm_msg':
        return this._ids.has(content.comm_id ?? '');
      case 'comm_close':
        return this._ids.delete(content.comm_id ?? '');
      case 'comm_info_request':
        return TARGETS.has(content.target_name ?? '');
      default:
        return false;
    }
  }

  private _wanted(): boolean {
    return this.kernel.handleComms && String(this.kernel.commsOverSubshells) !== 'disabled';
  }

  /** JupyterLab's kernel_info future, done at the first good answer of shell or control. */
  private _kernelInfo(future: Kernel.IShellFuture<any, any>): Kernel.IShellFuture<any, any> {
    const kernel = this.kernel;
    let control: Kernel.IControlFuture<any, any>;
    try {
      control = kernel.sendControlMessage(
        KernelMessage.createMessage({
          msgType: 'kernel_info_request',
          channel: 'control',
          username: kernel.username,
          session: kernel.clientId,
          content: {}
        }) as any,
        true,
        true
      );
    } catch {
      return future;
    }
    const shell = future.done;
    let answered = false;
    shell.then(
      () => (answered = true),
      () => (answered = true)
    );
    const early = control.done.then(
      async (reply: KernelMessage.IInfoReplyMsg) => {
        const status = reply.content.status as string | undefined;
        if (status !== undefined && status !== 'ok') {
          return shell;
        }
        // An idle kernel's shell answers as fast: then nothing more is needed.
        await Promise.race([shell.catch(() => undefined), sleep(GRACE_MS)]);
        const features = (reply.content as any).supported_features as string[] | undefined;
        if (answered) {
          return shell;
        }
        if (this.comms && this._wanted() && features?.includes('kernel subshells')) {
          this._use(await this._viaClone()); // the main shell is busy: before the queue goes
        }
        return reply;
      },
      () => shell
    );
    const done = Promise.race([shell, early]);
    done.then(
      () => this._infoDone(),
      () => undefined
    );
    Object.defineProperty(future, 'done', { value: done, configurable: true });
    return future;
  }

  private _infoDone(): void {
    this._infoSeen = true;
    this._held = [];
    // Once JupyterLab has read the answer (supportsSubshells): find or create the subshell
    // now, so that a new comm's first messages and the next reload need not wait.
    void this.kernel.info.then(() => {
      if (this.comms && !this._subshell && !this._finding && this._wanted() &&
          this.kernel.supportsSubshells) {
        this._finding = findOrCreate(this.kernel)
          .then(id => this._use(id))
          .catch(() => undefined)
          .then(() => (this._finding = null));
      }
    }, () => undefined);
  }

  /** Our subshell found or created over a clone (this connection's queue is held). */
  private async _viaClone(): Promise<string | null> {
    let clone: Kernel.IKernelConnection | null = null;
    try {
      const kernel = this.kernel;
      clone = kernel.clone({ handleComms: false });
      new Route(clone, false); // its kernel_info on control too
      const conn = clone;
      const work = (async () => {
        await conn.info;
        return conn.supportsSubshells ? findOrCreate(conn, kernel.id) : null;
      })().catch(() => null); // also when it fails after the timeout (clone disposed)
      return await Promise.race([work, sleep(GATE_MS).then(() => null)]);
    } catch {
      return null;
    } finally {
      clone?.dispose();
    }
  }

  private _use(id: string | null): void {
    if (!id) {
      return;
    }
    this._subshell = id;
    for (const msg of this._held) {
      msg.header.subshell_id ??= id;
    }
    this._held = [];
  }

  private _onStatus(_: Kernel.IKernelConnection, status: Kernel.Status): void {
    if (status === 'restarting' || status === 'autorestarting') {
      // A restarted kernel has no subshells.
      this._subshell = null;
      this._infoSeen = false;
      forget(this.kernel.id);
      markKnown(this.kernel.id, false); // until the new kernel's comm answers
    }
  }

  private _subshell: string | null = null;
  private _finding: Promise<unknown> | null = null;
  private _infoSeen = false;
  private _held: KernelMessage.IShellMessage[] = [];
  private _ids = new Set<string>();
}

/** The subshell this tab used in the kernel before if it is still there, else a new one. */
async function findOrCreate(
  conn: Kernel.IKernelConnection,
  kernelId: string = conn.id
): Promise<string> {
  const known = recall(kernelId);
  if (known) {
    const list = await conn.requestListSubshell({}).done;
    if ((list.content as any).subshell_id?.includes(known)) {
      return known;
    }
  }
  const reply = await conn.requestCreateSubshell({}).done;
  const id = (reply.content as any).subshell_id as string;
  remember(kernelId, id);
  return id;
}

function recall(kernelId: string): string | null {
  try {
    return window.sessionStorage.getItem(STORE + kernelId);
  } catch {
    return null;
  }
}

function remember(kernelId: string, id: string): void {
  try {
    window.sessionStorage.setItem(STORE + kernelId, id);
  } catch {
    // storage off: a reload creates another subshell
  }
}

function forget(kernelId: string): void {
  try {
    window.sessionStorage.removeItem(STORE + kernelId);
  } catch {
    // storage off
  }
}

/** localStorage key prefix: kernels whose sandbox_magics comm answered in this browser. */
const KNOWN = 'sandbox-magics:kernel:';

function known(kernelId: string): boolean {
  try {
    return window.localStorage.getItem(KNOWN + kernelId) !== null;
  } catch {
    return false;
  }
}

function markKnown(kernelId: string, yes: boolean): void {
  try {
    if (yes) {
      window.localStorage.setItem(KNOWN + kernelId, '1');
    } else {
      window.localStorage.removeItem(KNOWN + kernelId);
    }
  } catch {
    // storage off: a reload while busy waits for the kernel, as without this extension
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise(resolve => setTimeout(resolve, ms));
}
