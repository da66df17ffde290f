//! The terminal view: what is drawn and what each key does, as pure
//! functions of the [`Board`] and the view's state, so that they can be
//! tested on ratatui's `TestBackend`. Setting the terminal up and
//! restoring it is `terminal`'s.

use ratatui::{
    Frame,
    crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Paragraph, Row as TableRow, Table, TableState},
};

use super::{
    format::{self, COLUMNS, bytes, cells, count, percent, rate_per_second, shown},
    model::{Board, Flow, SortKey, Status, TaskDetails},
};

/// Below this size the view says so instead of drawing a squeezed table.
pub const MIN_WIDTH: u16 = 72;
pub const MIN_HEIGHT: u16 = 8;

/// What the screen shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Tasks,
    /// The selected task's details.
    Details,
}

/// The view's state: the sort key, the selected task, the view, and the
/// status line's text.
#[derive(Clone, Debug)]
pub struct App {
    pub sort: SortKey,
    /// Selected by id, so that the selection follows the task when the
    /// order changes.
    pub selected: Option<String>,
    pub view: View,
    /// Where the figures come from (`ebpf`, `agent at ADDR`).
    pub origin: String,
    /// The latest thing to tell: an unreachable agent, a log line.
    pub notice: Option<String>,
}

/// What a key asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    Quit,
}

impl App {
    pub fn new(sort: SortKey, origin: String) -> Self {
        App {
            sort,
            selected: None,
            view: View::Tasks,
            origin,
            notice: None,
        }
    }

    pub fn on_key(&mut self, key: KeyEvent, board: &Board) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::Continue;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('c') if ctrl => return Action::Quit,
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Char(c) if SortKey::from_key(c).is_some() && !ctrl => {
                self.sort = SortKey::from_key(c).unwrap_or_default();
            }
            KeyCode::Esc | KeyCode::Backspace | KeyCode::Left if self.view == View::Details => {
                self.view = View::Tasks;
            }
            KeyCode::Esc => return Action::Quit,
            KeyCode::Enter | KeyCode::Right if self.view == View::Tasks => {
                self.fix_selection(board);
                if self.selected.is_some() {
                    self.view = View::Details;
                }
            }
            KeyCode::Enter => self.view = View::Tasks,
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(board, -1),
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(board, 1),
            KeyCode::Home => self.move_selection(board, isize::MIN),
            KeyCode::End => self.move_selection(board, isize::MAX),
            _ => {}
        }
        Action::Continue
    }

    /// Selects the first task when nothing (or a task that left) is; the
    /// details of a task that left give way to the table.
    pub fn fix_selection(&mut self, board: &Board) {
        let rows = board.rows(self.sort);
        let present = |id: &String| rows.iter().any(|row| &row.task_id == id);
        if !self.selected.as_ref().is_some_and(present) {
            self.selected = rows.first().map(|row| row.task_id.clone());
            self.view = View::Tasks;
        }
    }

    fn move_selection(&mut self, board: &Board, by: isize) {
        let rows = board.rows(self.sort);
        if rows.is_empty() || self.view != View::Tasks {
            return;
        }
        let current = self
            .selected
            .as_ref()
            .and_then(|id| rows.iter().position(|row| &row.task_id == id))
            .unwrap_or(0);
        let target = current.saturating_add_signed(by).min(rows.len() - 1);
        self.selected = Some(rows[target].task_id.clone());
    }

    /// Draws the whole screen.
    pub fn draw(&mut self, frame: &mut Frame, board: &Board) {
        let area = frame.area();
        if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
            let text = format!(
                "terminal too small ({}x{}): propmon top needs {MIN_WIDTH}x{MIN_HEIGHT}; q quits",
                area.width, area.height
            );
            let wrap = ratatui::widgets::Wrap { trim: true };
            frame.render_widget(Paragraph::new(text).wrap(wrap), area);
            return;
        }
        self.fix_selection(board);
        let notice_height = u16::from(self.notice.is_some());
        let [title, body, notice, footer] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(1),
            Constraint::Length(notice_height),
            Constraint::Length(1),
        ])
        .areas(area);
        frame.render_widget(self.title_line(board), title);
        let details = self.selected.as_deref().and_then(|id| board.details(id));
        match (self.view, details) {
            (View::Details, Some(details)) => draw_details(frame, body, &details),
            _ => {
                self.view = View::Tasks;
                self.draw_table(frame, body, board);
            }
        }
        if let Some(text) = &self.notice {
            frame.render_widget(Line::from(shown(text)), notice);
        }
        frame.render_widget(self.footer_line(), footer);
    }

    fn title_line(&self, board: &Board) -> Line<'static> {
        let tasks = match board.len() {
            1 => "1 task".to_owned(),
            n => format!("{n} tasks"),
        };
        let ended = if board.running() < board.len() {
            format!(" ({} running)", board.running())
        } else {
            String::new()
        };
        Line::from(vec![
            Span::styled("propmon top", Style::new().add_modifier(Modifier::BOLD)),
            Span::raw(format!(
                "  {tasks}{ended}  sorted by {}  {}",
                self.sort.name(),
                self.origin
            )),
        ])
    }

    fn footer_line(&self) -> Line<'static> {
        let keys = match self.view {
            View::Tasks => {
                "q quit  c/m/d/n sort by CPU/memory/disk/network  ↑↓ select  Enter details"
            }
            View::Details => "q quit  Esc back",
        };
        Line::from(Span::styled(
            keys,
            Style::new().add_modifier(Modifier::REVERSED),
        ))
    }

    fn draw_table(&self, frame: &mut Frame, area: Rect, board: &Board) {
        let rows = board.rows(self.sort);
        if rows.is_empty() {
            let waiting = "no task yet: the first figures come after one interval";
            frame.render_widget(Paragraph::new(waiting), area);
            return;
        }
        let widths = COLUMNS.map(|column| match column.width {
            0 => Constraint::Min(4),
            width => Constraint::Length(width),
        });
        let header = TableRow::new(right_aligned(COLUMNS.map(|c| c.header.to_owned())))
            .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
        let selected = self
            .selected
            .as_ref()
            .and_then(|id| rows.iter().position(|row| &row.task_id == id));
        let lines: Vec<TableRow> = rows
            .iter()
            .map(|row| {
                let line = TableRow::new(right_aligned(cells(row)));
                match row.status {
                    Status::Running => line,
                    _ => line.style(Style::new().add_modifier(Modifier::DIM)),
                }
            })
            .collect();
        let table = Table::new(lines, widths)
            .header(header)
            .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
        let mut state = TableState::default().with_selected(selected);
        frame.render_stateful_widget(table, area, &mut state);
    }
}

/// Cells padded like the batch table: numbers to the right of their
/// column, the task id as it is.
fn right_aligned(cells: [String; COLUMNS.len()]) -> [String; COLUMNS.len()] {
    let mut index = 0;
    cells.map(|cell| {
        let width = usize::from(COLUMNS[index].width);
        index += 1;
        if width == 0 {
            cell
        } else {
            format!("{cell:>width$}")
        }
    })
}

/// The details view: summary, disk, network by protocol, TCP's health and
/// the peers.
fn draw_details(frame: &mut Frame, area: Rect, details: &TaskDetails) {
    let [summary, disk, protocols, peers] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Length(3),
        Constraint::Length(7),
        Constraint::Min(3),
    ])
    .areas(area);
    frame.render_widget(summary_text(details), summary);
    frame.render_widget(disk_text(details), disk);
    draw_protocols(frame, protocols, details);
    draw_peers(frame, peers, details);
}

fn boxed(title: &str) -> Block<'_> {
    Block::new().borders(Borders::TOP).title(title)
}

fn summary_text(details: &TaskDetails) -> Paragraph<'static> {
    let message = &details.message;
    let metrics = &message.metrics;
    let status = match details.row.status {
        Status::Ended(Some(reason)) => format!("ended ({})", end_reason(reason)),
        status => status.name().to_owned(),
    };
    let interval = details.interval.map_or_else(
        || "rates need two messages".to_owned(),
        |s| format!("rates over {s:.1}s"),
    );
    let lines = vec![
        Line::from(format!(
            "{}  on {}  {status}  seq {}  up {}s  source {}  {interval}",
            shown(&message.task_id),
            shown(&message.proplet_id),
            message.seq,
            metrics.uptime_seconds,
            format!("{:?}", message.source).to_lowercase(),
        )),
        Line::from(format!(
            "CPU {}%  CPU time {}  memory {} ({}%)",
            percent(details.row.cpu_percent),
            metrics.cpu_time_ns.map_or_else(
                || format::UNKNOWN.to_owned(),
                |ns| format!("{:.2}s", ns as f64 / 1e9)
            ),
            metrics
                .memory_bytes
                .map_or_else(|| format::UNKNOWN.to_owned(), bytes),
            percent(metrics.memory_percent),
        )),
        Line::from(format!(
            "processes {} (started {})  threads {}  open files {}",
            metrics.process_count,
            count(metrics.processes_started),
            count(metrics.thread_count),
            count(metrics.file_descriptor_count),
        )),
    ];
    Paragraph::new(lines).block(boxed(" Task "))
}

fn end_reason(reason: crate::message::EndReason) -> &'static str {
    use crate::message::EndReason::*;
    match reason {
        Exited => "exited",
        Stopped => "stopped",
        NotFound => "not found",
        AgentStopped => "agent stopped",
        Abandoned => "abandoned",
    }
}

fn disk_text(details: &TaskDetails) -> Paragraph<'static> {
    let metrics = &details.message.metrics;
    let total = |b: Option<u64>| b.map_or_else(|| format::UNKNOWN.to_owned(), bytes);
    let mut lines = vec![Line::from(format!(
        "read {} ({} total)  written {} ({} total)",
        rate_per_second(details.row.disk_read),
        total(metrics.disk_read_bytes),
        rate_per_second(details.row.disk_write),
        total(metrics.disk_write_bytes),
    ))];
    lines.push(Line::from(match &details.disk {
        Some(disk) => format!(
            "read calls {} ({} in {} calls)  write calls {} ({} in {} calls)  truncated before \
             writeback {}",
            rate_per_second(disk.rchar_rate),
            bytes(disk.details.rchar),
            disk.details.syscr,
            rate_per_second(disk.wchar_rate),
            bytes(disk.details.wchar),
            disk.details.syscw,
            bytes(disk.details.cancelled_write_bytes),
        ),
        None => "disk details not collected".to_owned(),
    }));
    Paragraph::new(lines).block(boxed(" Disk "))
}

fn flow_cells(flow: &Flow) -> [String; 4] {
    [
        rate_per_second(flow.rx_rate),
        rate_per_second(flow.tx_rate),
        bytes(flow.rx_bytes),
        bytes(flow.tx_bytes),
    ]
}

fn draw_protocols(frame: &mut Frame, area: Rect, details: &TaskDetails) {
    let block = boxed(" Network by protocol ");
    if details.protocols.is_empty() {
        let text = Paragraph::new("network figures not collected").block(block);
        frame.render_widget(text, area);
        return;
    }
    let [table_area, health] =
        Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(area);
    let rows = details.protocols.iter().map(|(name, flow)| {
        let [rx, tx, rx_total, tx_total] = flow_cells(flow);
        TableRow::new([name.to_string(), rx, tx, rx_total, tx_total])
    });
    let widths = [
        Constraint::Length(8),
        Constraint::Length(12),
        Constraint::Length(12),
        Constraint::Length(10),
        Constraint::Length(10),
    ];
    let header = TableRow::new(["PROTO", "RX", "TX", "RX TOTAL", "TX TOTAL"])
        .style(Style::new().add_modifier(Modifier::BOLD));
    frame.render_widget(
        Table::new(rows, widths).header(header).block(block),
        table_area,
    );
    frame.render_widget(Line::from(tcp_health(details)), health);
}

fn tcp_health(details: &TaskDetails) -> String {
    let Some(tcp) = details.tcp else {
        return String::new();
    };
    let figures = [
        ("retransmits", tcp.retransmits),
        ("failed connections", tcp.failed_connections),
        ("resets received", tcp.resets_received),
    ];
    if figures.iter().all(|(_, value)| value.is_none()) {
        return "TCP health: not reported by this backend".to_owned();
    }
    let shown: Vec<String> = figures
        .iter()
        .map(|(name, value)| format!("{name} {}", count(*value)))
        .collect();
    format!("TCP health: {}", shown.join("  "))
}

fn draw_peers(frame: &mut Frame, area: Rect, details: &TaskDetails) {
    let block = boxed(" Peers ");
    if details.peers.is_empty() {
        let text = Paragraph::new("no per-peer figures in this task's messages").block(block);
        frame.render_widget(text, area);
        return;
    }
    let rows = details.peers.iter().map(|line| {
        let peer = &line.peer;
        let [rx, tx, rx_total, tx_total] = flow_cells(&line.flow);
        TableRow::new([
            shown(&peer.peer),
            peer.protocol
                .as_deref()
                .map_or_else(|| format::UNKNOWN.to_owned(), shown),
            rx,
            tx,
            rx_total,
            tx_total,
            peer.connections_open.to_string(),
            count(peer.retransmits),
        ])
    });
    let widths = [
        Constraint::Min(16),
        Constraint::Length(6),
        Constraint::Length(11),
        Constraint::Length(11),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(5),
        Constraint::Length(7),
    ];
    let header = TableRow::new([
        "PEER", "PROTO", "RX", "TX", "RX TOTAL", "TX TOTAL", "OPEN", "RETRANS",
    ])
    .style(Style::new().add_modifier(Modifier::BOLD));
    frame.render_widget(Table::new(rows, widths).header(header).block(block), area);
}

#[cfg(test)]
mod tests {
    use ratatui::{Terminal, backend::TestBackend};

    use super::*;
    use crate::{
        export::latest::tests::message,
        message::{NetworkDetails, Peer},
    };

    fn screen(app: &mut App, board: &Board, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|frame| app.draw(frame, board)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        let mut text = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                text.push_str(buffer[(x, y)].symbol());
            }
            text.push('\n');
        }
        text
    }

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn board() -> Board {
        let mut with_peers = message("web", 1, false);
        with_peers.details.network = Some(NetworkDetails {
            peers: vec![Peer {
                peer: "192.0.2.7:443".into(),
                protocol: Some("tcp".into()),
                rx_bytes: 2048,
                ..Default::default()
            }],
            ..Default::default()
        });
        let mut board = Board::default();
        board.record([with_peers, message("db", 1, false)]);
        board
    }

    #[test]
    fn the_table_lists_every_task_under_its_headers() {
        let mut app = App::new(SortKey::Cpu, "ebpf".into());
        let text = screen(&mut app, &board(), 100, 12);
        assert!(text.contains("CPU%"), "{text}");
        assert!(text.contains("TASK") && text.contains("web") && text.contains("db"));
        assert!(text.contains("2 tasks  sorted by CPU  ebpf"), "{text}");
    }

    #[test]
    fn the_notice_has_a_line_of_its_own() {
        let mut app = App::new(SortKey::Cpu, "agent at 127.0.0.1:9464".into());
        app.notice = Some("cannot reach the agent\u{1b}[2J; retrying".into());
        let text = screen(&mut app, &board(), 80, 10);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[8].starts_with(r"cannot reach the agent\u{1b}[2J; retrying"),
            "{text}"
        );
        assert!(lines[9].starts_with("q quit"), "{text}");
    }

    #[test]
    fn enter_shows_the_details_and_escape_goes_back() {
        let board = board();
        let mut app = App::new(SortKey::Cpu, "ebpf".into());
        app.on_key(key(KeyCode::Down), &board);
        assert_eq!(app.on_key(key(KeyCode::Enter), &board), Action::Continue);
        assert_eq!(app.view, View::Details);
        let text = screen(&mut app, &board, 120, 30);
        let selected = app.selected.clone().unwrap();
        assert!(text.contains(&selected), "{text}");
        assert!(text.contains("Network by protocol"), "{text}");
        if selected == "web" {
            assert!(text.contains("192.0.2.7:443"), "{text}");
        } else {
            assert!(text.contains("no per-peer figures"), "{text}");
        }
        app.on_key(key(KeyCode::Esc), &board);
        assert_eq!(app.view, View::Tasks);
        app.on_key(key(KeyCode::Char('m')), &board);
        assert_eq!(app.sort, SortKey::Memory);
        assert_eq!(app.on_key(key(KeyCode::Char('q')), &board), Action::Quit);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(app.on_key(ctrl_c, &board), Action::Quit);
    }

    #[test]
    fn the_details_show_peers_when_the_backend_reports_them() {
        let board = board();
        let mut app = App::new(SortKey::Cpu, "ebpf".into());
        app.selected = Some("web".into());
        app.view = View::Details;
        let text = screen(&mut app, &board, 120, 30);
        assert!(
            text.contains("192.0.2.7:443") && text.contains("PEER"),
            "{text}"
        );
        assert!(text.contains("TCP health: not reported"), "{text}");
    }

    #[test]
    fn a_terminal_too_small_gets_a_message() {
        let board = board();
        for (width, height) in [(40, 5), (10, 2), (1, 1), (0, 0), (MIN_WIDTH, 3)] {
            let mut app = App::new(SortKey::Cpu, "ebpf".into());
            app.view = View::Details;
            let text = screen(&mut app, &board, width, height);
            if width >= 20 {
                assert!(
                    text.contains("terminal too small"),
                    "{width}x{height}: {text}"
                );
            }
        }
    }

    #[test]
    fn a_task_that_vanishes_leaves_the_details_view() {
        let mut board = board();
        let mut app = App::new(SortKey::Cpu, "agent".into());
        app.selected = Some("gone-already".into());
        app.view = View::Details;
        let text = screen(&mut app, &board, 100, 12);
        assert_eq!(app.view, View::Tasks);
        assert!(text.contains("TASK"), "{text}");
        board.replace(Vec::new());
        board.replace(Vec::new());
        screen(&mut app, &Board::default(), 100, 12);
        assert_eq!(app.selected, None);
    }
}
