// sandbox-magics: a "Sandboxes" sidebar and a `sandbox 5/8` status-bar item for the
// active notebook's kernel, fed by the `sandbox_magics` comm that `%load_ext
// sandbox_magics` registers in the kernel.
import { ILabShell, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { MainAreaWidget } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';

import { answerWhileBusy, routeComms } from './busykernel';
import { highlightSandboxCells } from './highlight';
import { IRun, ModelRegistry, SandboxModel } from './model';
import { LogPanel, SandboxPanel, StatusItem } from './views';
import { saveWidgetState } from './widgetstate';

const ICON_SVG =
  '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 16 16">' +
  '<g class="jp-icon3" fill="#616161">' +
  '<rect x="1" y="2" width="6" height="5" rx="1"/><rect x="9" y="2" width="6" height="5" rx="1"/>' +
  '<rect x="1" y="9" width="6" height="5" rx="1"/><rect x="9" y="9" width="6" height="5" rx="1" opacity="0.4"/>' +
  '</g></svg>';

export const sandboxIcon = new LabIcon({ name: 'sandbox-magics:sandboxes', svgstr: ICON_SVG });

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'sandbox-magics:plugin',
  description: 'Sandboxes sidebar and status-bar item for sandbox_magics.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ILabShell, IStatusBar],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    labShell: ILabShell | null,
    statusBar: IStatusBar | null
  ) => {
    // A kernel that answers our comm has loaded sandbox_magics: its widget comms are
    // routed to a subshell from then on (busykernel.ts); other kernels are left alone.
    const models = new ModelRegistry(model =>
      model.changed.connect(() => model.state && routeComms(model.kernel))
    );
    const openLog = (model: SandboxModel, run: IRun) => {
      const content = new LogPanel(model, run);
      const widget = new MainAreaWidget({ content });
      widget.id = content.id;
      widget.title.label = content.title.label;
      widget.title.icon = sandboxIcon;
      app.shell.add(widget, 'main', { mode: 'split-right' });
      app.shell.activateById(widget.id);
    };
    const panel = new SandboxPanel(openLog);
    panel.title.icon = sandboxIcon;
    app.shell.add(panel, 'left', { rank: 600 });

    const item = new StatusItem();
    if (statusBar) {
      statusBar.registerStatusItem('sandbox-magics:status', {
        item,
        align: 'left',
        rank: 4
      });
    }

    // Every notebook's kernel gets a model as soon as it connects, so its state is
    // there when the notebook becomes active.
    const watch = (notebook: NotebookPanel) => {
      const context = notebook.sessionContext;
      // As soon as the connection exists, before it connects and the widget manager asks
      // for its comms: see busykernel.ts.
      answerWhileBusy(context.session?.kernel);
      context.kernelChanged.connect((_, change) => answerWhileBusy(change.newValue));
      const connect = () => {
        // A notebook whose kernel has our comm keeps its panels' state when saved.
        models.get(context.session?.kernel)?.changed.connect(
          model => model.state && saveWidgetState(notebook)
        );
        if (tracker.currentWidget === notebook) {
          follow(notebook);
        }
      };
      context.kernelChanged.connect(connect);
      context.statusChanged.connect(() => {
        if (tracker.currentWidget === notebook && panel.kernelGone !== kernelGone(notebook)) {
          follow(notebook);
        }
      });
      void context.ready.then(connect);
    };
    const follow = (notebook: NotebookPanel | null) => {
      const model = notebook ? models.get(notebook.sessionContext.session?.kernel) : null;
      panel.model = model;
      panel.kernelGone = kernelGone(notebook);
      panel.notebookName = notebook ? notebook.context.path : '';
      item.model = model;
    };
    tracker.widgetAdded.connect((_, notebook) => watch(notebook));
    tracker.forEach(watch);
    tracker.currentChanged.connect((_, notebook) => follow(notebook));
    follow(tracker.currentWidget);

    highlightSandboxCells(tracker);
  }
};

/** No kernel, and none starting: the notebook's kernel was shut down (or never started). */
function kernelGone(notebook: NotebookPanel | null): boolean {
  const context = notebook?.sessionContext;
  return (
    !!context &&
    !context.session?.kernel &&
    !['initializing', 'restarting'].includes(context.kernelDisplayStatus)
  );
}

export default plugin;
