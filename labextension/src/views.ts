// The status-bar item, the "Sandboxes" sidebar and a run's log panel.
import { Dialog, InputDialog, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { IKernel, ILog, IRun, IState, ISweep, SandboxModel } from './model';

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child);
  }
  return node;
}

export function elapsed(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = s % 60;
  const two = (n: number) => String(n).padStart(2, '0');
  return h ? `${h}:${two(m)}:${two(r)}` : `${m}:${two(r)}`;
}

/** Follows one model at a time (the active notebook's kernel's). */
abstract class ModelView extends Widget {
  get model(): SandboxModel | null {
    return this._model;
  }

  set model(model: SandboxModel | null) {
    if (model === this._model) {
      return;
    }
    this._model?.changed.disconnect(this.render, this);
    this._model = model;
    model?.changed.connect(this.render, this);
    this.render();
  }

  abstract render(): void;

  dispose(): void {
    this.model = null;
    super.dispose();
  }

  private _model: SandboxModel | null = null;
}

/** `sandbox 5/8`: busy of total slots of the kernel's pools; hidden without the extension. */
export class StatusItem extends ModelView {
  constructor() {
    super();
    this.addClass('sbx-lab-status');
    this.node.title = 'Busy / total sandbox slots of this kernel';
    this.render();
  }

  render(): void {
    const state = this.model?.state;
    if (!state) {
      this.node.textContent = '';
      this.hide();
      return;
    }
    this.node.textContent = `sandbox ${state.busy}/${state.total}` + (state.money ? ` · ${state.money}` : '');
    this.node.title = state.pools.length
      ? state.pools
          .map(
            p =>
              `${p.profile} (${p.backend}): ${p.busy}/${p.total} busy, ${p.queued} queued` +
              (p.spending ? `, ${p.spending}` : '')
          )
          .join('\n')
      : 'No pool has started in this kernel yet';
    this.show();
  }
}

/** The left sidebar: pools, sandboxes and slots, runs with elapsed time, and controls. */
export class SandboxPanel extends ModelView {
  constructor(private readonly openLog: (model: SandboxModel, run: IRun) => void) {
    super();
    this.id = 'sandbox-magics-sidebar';
    this.addClass('sbx-lab-panel');
    this.title.caption = 'Sandboxes';
    this.render();
  }

  set notebookName(name: string) {
    this._notebook = name;
    this.render();
  }

  protected onAfterAttach(): void {
    this._timer = window.setInterval(() => this._tick(), 1000);
  }

  protected onBeforeDetach(): void {
    window.clearInterval(this._timer);
  }

  set model(model: SandboxModel | null) {
    const old = super.model;
    old?.notice.disconnect(this._onNotice, this);
    super.model = model;
    model?.notice.connect(this._onNotice, this);
  }

  get model(): SandboxModel | null {
    return super.model;
  }

  render(): void {
    const node = this.node;
    node.textContent = '';
    node.append(el('h2', { class: 'sbx-lab-title' }, 'Sandboxes'));
    node.append(el('div', { class: 'sbx-lab-muted' }, this._notebook || 'No notebook is active.'));
    const state = this.model?.state;
    if (!state) {
      node.append(el('div', { class: 'sbx-lab-empty' }, this._emptyText()));
      return;
    }
    if (this._message) {
      node.append(
        el('div', { class: this._message.error ? 'sbx-lab-notice sbx-lab-error' : 'sbx-lab-notice' }, this._message.text)
      );
    }
    if (!state.pools.length) {
      node.append(el('div', { class: 'sbx-lab-empty' }, 'No pool has started yet: run a %%sandbox cell.'));
    }
    for (const pool of state.pools) {
      node.append(this._pool(state, pool));
    }
    if (state.kernels?.length) {
      node.append(this._kernels(state.kernels));
    }
    if (state.sweeps?.length) {
      node.append(this._sweeps(state.sweeps));
    }
    node.append(this._runs(state));
    this._tick();
  }

  private _pool(state: IState, pool: IState['pools'][number]): HTMLElement {
    const scale = el('button', { class: 'sbx-lab-button', title: `Set the number of ${pool.profile} sandboxes` }, 'Scale…');
    scale.onclick = async () => {
      const result = await InputDialog.getText({
        title: `Scale ${pool.profile}`,
        label: `Sandboxes to keep (0–${pool.max_sandboxes}), or auto`,
        text: pool.target === null ? 'auto' : String(pool.target)
      });
      const value = result.value?.trim() ?? '';
      if (!result.button.accept) {
        return;
      }
      if (value !== 'auto' && !/^\d+$/.test(value)) {
        this._onNotice(null, {
          text: `Scale takes a whole number of ${pool.profile} sandboxes (0–${pool.max_sandboxes}) or auto; got "${value}". Nothing changed.`,
          error: true
        });
        return;
      }
      this.model?.send({ action: 'scale', profile: pool.profile, sandboxes: value });
    };
    const stop = el('button', { class: 'sbx-lab-button', title: `Stop every ${pool.profile} sandbox (scale to 0)` }, 'Shut down');
    stop.onclick = async () => {
      const boxes = pool.sandboxes.length;
      const going = state.runs.filter(r => !r.done && r.profile === pool.profile).length;
      const result = await showDialog({
        title: `Shut down ${pool.profile}?`,
        body:
          `${boxes} sandbox(es) of ${pool.profile} stop: idle ones now, busy ones once their ` +
          `runs end (${going} run(s) going; they are not cancelled). New ${pool.profile} runs ` +
          'fail at once until you scale it up again (Scale… auto, or %sandbox scale ' +
          `${pool.profile} auto).`,
        buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Shut down' })]
      });
      if (result.button.accept) {
        this.model?.send({ action: 'shutdown', profile: pool.profile });
      }
    };
    const names = new Map(state.runs.map(r => [r.id, r.name]));
    const boxes = pool.sandboxes.map(box =>
      el(
        'div',
        { class: 'sbx-lab-box' },
        el('span', { class: 'sbx-lab-box-id' }, box.id),
        ...box.slots.map((slot, i) => {
          const run = box.runs[i];
          const title = `${box.id} slot ${i}: ${slot}` + (run ? ` · ${run} ${names.get(run) ?? ''}` : '');
          return el('i', { class: `sbx-lab-slot sbx-lab-slot-${slot}`, title });
        }),
        box.state === 'ready'
          ? ''
          : el(
              'span',
              { class: 'sbx-lab-muted sbx-lab-box-state' },
              ` ${box.state}` +
                (box.stage && box.state === 'starting' ? `: ${box.stage} (${elapsed(box.stage_for ?? 0)})` : '')
            )
      )
    );
    return el(
      'section',
      { class: 'sbx-lab-pool', 'data-profile': pool.profile },
      el(
        'div',
        { class: 'sbx-lab-pool-head' },
        el('b', {}, pool.profile),
        ` ${pool.backend} · ${pool.busy}/${pool.total} busy · ${pool.queued} queued` +
          (pool.starting ? ` · ${pool.starting} starting` : '') +
          (pool.spending ? ` · ${pool.spending}` : '')
      ),
      el('div', { class: 'sbx-lab-controls' }, scale, stop),
      ...(pool.idle_warning ? [this._idleWarning(pool.profile, pool.idle_warning)] : []),
      ...boxes
    );
  }

  private _idleWarning(profile: string, text: string): HTMLElement {
    const keep = el('button', { class: 'sbx-lab-button sbx-lab-keep', title: 'Start their idle clock again, once' }, 'Keep');
    const stop = el('button', { class: 'sbx-lab-button sbx-lab-stop-idle', title: 'Stop these idle sandboxes now' }, 'Stop now');
    keep.onclick = () => this.model?.send({ action: 'keep-idle', profile });
    stop.onclick = () => this.model?.send({ action: 'stop-idle', profile });
    return el('div', { class: 'sbx-lab-notice sbx-lab-idle' }, `${text} — `, keep, ' ', stop);
  }

  private _kernels(kernels: IKernel[]): HTMLElement {
    const list = el('section', { class: 'sbx-lab-kernels' }, el('h3', {}, 'Kernel sessions'));
    for (const kernel of kernels) {
      const since = new Date(kernel.since * 1000).toLocaleTimeString();
      const memory = kernel.memory ? ` · ${Math.round(kernel.memory / 2 ** 20)} MB` : '';
      const detail = kernel.state === 'stopped' && kernel.ended ? ` (${kernel.ended})` : '';
      const row = el(
        'div',
        { class: `sbx-lab-kernel sbx-lab-kernel-${kernel.state}`, 'data-session': kernel.session, 'data-profile': kernel.profile, 'data-state': kernel.state },
        el('b', {}, kernel.session),
        el('span', { class: 'sbx-lab-muted' }, ` ${kernel.profile} · ${kernel.state}${detail} since ${since}${memory} · ${kernel.cells} cells`)
      );
      const actions: [string, string, string][] = [
        ['kernel-interrupt', 'Interrupt', 'Interrupt the running cell; the kernel keeps its state'],
        ['kernel-restart', 'Restart', 'Stop the kernel and start a fresh one'],
        ['kernel-stop', 'Stop', 'Stop the kernel; its next cell starts a fresh one']
      ];
      for (const [action, label, title] of actions) {
        const button = el('button', { class: `sbx-lab-button sbx-lab-${action}`, title }, label);
        button.onclick = () => {
          (button as HTMLButtonElement).disabled = true;
          this.model?.send({ action, session: kernel.session, profile: kernel.profile });
        };
        row.append(' ', button);
      }
      list.append(row);
    }
    return list;
  }

  private _sweeps(sweeps: ISweep[]): HTMLElement {
    const list = el('section', { class: 'sbx-lab-sweeps' }, el('h3', {}, 'Sweeps'));
    for (const sweep of [...sweeps].reverse()) {
      const ended = sweep.succeeded + sweep.failed + sweep.lost + sweep.cancelled;
      const bar = el('progress', { class: 'sbx-lab-sweep-bar', max: String(sweep.items), value: String(ended) });
      const counts = (['running', 'queued', 'succeeded', 'failed', 'lost', 'cancelled'] as const)
        .filter(k => sweep[k] > 0)
        .map(k => `${sweep[k]} ${k}`)
        .join(' · ');
      const row = el(
        'div',
        { class: `sbx-lab-sweep${sweep.done ? ' sbx-lab-sweep-done' : ''}`, 'data-sweep': sweep.id },
        el('b', {}, sweep.name),
        el('span', { class: 'sbx-lab-muted' }, ` ${sweep.id} · ${sweep.profile} · ${ended}/${sweep.items} ended`),
        bar,
        el('div', { class: 'sbx-lab-sweep-counts' }, counts)
      );
      if (!sweep.done) {
        const cancel = el('button', { class: 'sbx-lab-button sbx-lab-cancel', title: `Cancel every item of ${sweep.name} not ended` }, 'Cancel');
        cancel.onclick = () => {
          cancel.textContent = 'Cancelling…';
          (cancel as HTMLButtonElement).disabled = true;
          this.model?.send({ action: 'cancel-sweep', sweep: sweep.id });
        };
        row.append(cancel);
      }
      list.append(row);
    }
    return list;
  }

  private _runs(state: IState): HTMLElement {
    const running = state.runs.filter(r => !r.done);
    const list = el('section', { class: 'sbx-lab-runs' }, el('h3', {}, `Runs (${running.length} going)`));
    const rows = [...running, ...state.runs.filter(r => r.done).reverse()];
    for (const run of rows) {
      const name = el('a', { class: 'sbx-lab-run-name', href: '#', title: `Open the log of ${run.id}` }, run.name);
      name.onclick = event => {
        event.preventDefault();
        if (this.model) {
          this.openLog(this.model, run);
        }
      };
      const time = el('span', { class: 'sbx-lab-elapsed', 'data-started': String(run.started ?? ''), 'data-ended': String(run.ended ?? '') });
      const row = el(
        'div',
        { class: `sbx-lab-run sbx-lab-run-${run.state}`, 'data-run': run.id },
        name,
        el('span', { class: 'sbx-lab-muted' }, ` ${run.id} · ${run.profile} · `),
        el('span', { class: 'sbx-lab-state' }, run.state),
        ' ',
        time
      );
      if (!run.done) {
        const cancel = el('button', { class: 'sbx-lab-button sbx-lab-cancel', title: `Cancel ${run.id}` }, 'Cancel');
        cancel.onclick = () => {
          cancel.textContent = 'Cancelling…';
          (cancel as HTMLButtonElement).disabled = true;
          this.model?.send({ action: 'cancel', run: run.id });
        };
        row.append(' ', cancel);
      }
      list.append(row);
    }
    if (!rows.length) {
      list.append(el('div', { class: 'sbx-lab-muted' }, 'No run yet.'));
    }
    return list;
  }

  private _tick(): void {
    const now = Date.now() / 1000 + (this.model?.clockOffset ?? 0);
    this.node.querySelectorAll<HTMLElement>('.sbx-lab-elapsed').forEach(node => {
      const started = Number(node.dataset.started) || 0;
      const ended = Number(node.dataset.ended) || 0;
      node.textContent = started ? elapsed((ended || now) - started) : '';
    });
  }

  /** What the sidebar says when it has no state to show, and why. */
  private _emptyText(): string {
    if (!this._notebook) {
      return 'Open a notebook to see its sandboxes.';
    }
    if (!this.model && this.kernelGone) {
      return `The kernel of ${this._notebook} is not running: start it, then run %load_ext sandbox_magics.`;
    }
    if (!this.model) {
      return 'Connecting to the kernel…';
    }
    if (!this.model.answered) {
      return 'Connecting to the kernel…';
    }
    return 'Run %load_ext sandbox_magics in this notebook to see its sandboxes here.';
  }

  private _onNotice(_: SandboxModel | null, notice: { text: string; error: boolean }): void {
    this._message = notice;
    this.render();
  }

  /** The active notebook's session is ready and has no kernel (it was shut down). */
  kernelGone = false;
  private _notebook = '';
  private _timer = 0;
  private _message: { text: string; error: boolean } | null = null;
}

/** One run's log tail, in the main area; updated by the kernel while it is open. */
export class LogPanel extends Widget {
  constructor(readonly model: SandboxModel, readonly run: IRun) {
    super();
    this.addClass('sbx-lab-log');
    this.id = `sandbox-magics-log-${run.id}-${Math.random().toString(36).slice(2, 8)}`;
    this.title.label = `log ${run.name}`;
    this.title.closable = true;
    this._head = el('div', { class: 'sbx-lab-log-head' }, `${run.name} (${run.id}) · ${run.state}`);
    this._body = el('pre', { class: 'sbx-lab-log-body' });
    this.node.append(this._head, this._body);
    model.logReceived.connect(this._onLog, this);
    model.restarted.connect(this._onRestart, this);
    model.send({ action: 'log', run: run.id });
  }

  dispose(): void {
    this.model.logReceived.disconnect(this._onLog, this);
    this.model.restarted.disconnect(this._onRestart, this);
    this.model.send({ action: 'log', run: null });
    super.dispose();
  }

  private _onLog(_: SandboxModel, log: ILog): void {
    if (log.run !== this.run.id) {
      return;
    }
    this._head.textContent = `${log.name ?? this.run.name} (${log.run}) · ${log.state}`;
    const atEnd = this.node.scrollTop + this.node.clientHeight >= this.node.scrollHeight - 4;
    this._body.textContent = log.text;
    if (atEnd) {
      this.node.scrollTop = this.node.scrollHeight;
    }
  }

  /** The kernel that ran it is gone: the log stays, said to be from before. */
  private _onRestart(): void {
    this._head.textContent =
      `${this.run.name} (${this.run.id}) · from the kernel before its restart; ` +
      `run %sandbox logs ${this.run.name} in the new kernel to follow it`;
    this._head.classList.add('sbx-lab-stale');
  }

  private _head: HTMLElement;
  private _body: HTMLElement;
}
