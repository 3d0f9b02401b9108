// Simulation model of the Lattice ECP5 MULT18X18D (18x18 multiplier), the subset ShiftPQ instantiates
// (hw/shiftpq_hw/dsp.py, RegisteredProduct): A and B each with or without an input register, the
// product with or without the pipeline and the output register, every register on CLK0, CE0 and
// RST0 (synchronous reset, before the clock enable); SIGNEDA and SIGNEDB as given; C, SOURCEA and
// SOURCEB tied low (not modelled). Any other parameter value stops the simulation at time zero,
// so a model that does not match the instance cannot pass silently. Only for the simulators:
// synthesis (Yosys synth_ecp5, nextpnr-ecp5) maps the instance to the FPGA's DSP block.
/* verilator lint_off UNUSEDSIGNAL */  // C, SOURCEA, SOURCEB: not modelled (tied low)
module MULT18X18D (
    input
    A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0,
    B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0,
    C17, C16, C15, C14, C13, C12, C11, C10, C9, C8, C7, C6, C5, C4, C3, C2, C1, C0,
    input SIGNEDA, SIGNEDB, SOURCEA, SOURCEB, CLK0, CE0, RST0,
    output
    P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20, P19, P18,
    P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3, P2, P1, P0
);
/* verilator lint_on UNUSEDSIGNAL */
    parameter REG_INPUTA_CLK = "NONE";
    parameter REG_INPUTA_CE = "CE0";
    parameter REG_INPUTA_RST = "RST0";
    parameter REG_INPUTB_CLK = "NONE";
    parameter REG_INPUTB_CE = "CE0";
    parameter REG_INPUTB_RST = "RST0";
    parameter REG_PIPELINE_CLK = "NONE";
    parameter REG_PIPELINE_CE = "CE0";
    parameter REG_PIPELINE_RST = "RST0";
    parameter REG_OUTPUT_CLK = "NONE";
    parameter REG_OUTPUT_CE = "CE0";
    parameter REG_OUTPUT_RST = "RST0";
    parameter RESETMODE = "SYNC";

    localparam IN_A = REG_INPUTA_CLK == "CLK0";
    localparam IN_B = REG_INPUTB_CLK == "CLK0";
    localparam PIPE = REG_PIPELINE_CLK == "CLK0";
    localparam OUT = REG_OUTPUT_CLK == "CLK0";
    localparam SUPPORTED = (IN_A || REG_INPUTA_CLK == "NONE") && (IN_B || REG_INPUTB_CLK == "NONE")
        && (PIPE || REG_PIPELINE_CLK == "NONE") && (OUT || REG_OUTPUT_CLK == "NONE")
        && REG_INPUTA_CE == "CE0" && REG_INPUTB_CE == "CE0" && REG_PIPELINE_CE == "CE0" && REG_OUTPUT_CE == "CE0"
        && REG_INPUTA_RST == "RST0" && REG_INPUTB_RST == "RST0" && REG_PIPELINE_RST == "RST0"
        && REG_OUTPUT_RST == "RST0" && RESETMODE == "SYNC";
    initial if (!SUPPORTED) begin
        $display("MULT18X18D model: a parameter outside the modelled subset (%m)");
        $finish;
    end

    wire [17:0] a = {A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0};
    wire [17:0] b = {B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0};
    reg [17:0] a_r = 18'd0, b_r = 18'd0;
    reg [35:0] pipe_r = 36'd0, out_r = 36'd0;
    always @(posedge CLK0) begin
        if (RST0) begin
            a_r <= 18'd0;
            b_r <= 18'd0;
            pipe_r <= 36'd0;
            out_r <= 36'd0;
        end else if (CE0) begin
            a_r <= a;
            b_r <= b;
            pipe_r <= product;
            out_r <= piped;
        end
    end
    wire [17:0] a_in = IN_A ? a_r : a;
    wire [17:0] b_in = IN_B ? b_r : b;
    wire signed [18:0] a_x = {SIGNEDA & a_in[17], a_in};  // the operand as the sign control reads it
    wire signed [18:0] b_x = {SIGNEDB & b_in[17], b_in};
    wire [35:0] product = a_x * b_x;  // signed operands: extended to 36 bits, the product exact in 36
    wire [35:0] piped = PIPE ? pipe_r : product;
    wire [35:0] p = OUT ? out_r : piped;
    assign {P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20, P19, P18, P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3, P2, P1, P0} = p;
endmodule
